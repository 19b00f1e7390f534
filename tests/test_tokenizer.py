"""Tests for dbdist.text.tokenizer: ids must match keras-cv's CLIP tokenizer."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

from dbdist.text.tokenizer import ClipTokenizer, PromptTooLongError, resolve_vocab_path

PROMPTS = [
    "",
    "a photo of sks dog",
    "A Photo Of SKS Dog",
    "a photo of sks dog, on the beach!!! (8k, highly detailed)",
    "it's a dog; we'll see. they're here, I'm sure you've done it, he'd go",
    "IT'S LOUD",
    "123 4567 3.14159 1e10 #42 $9.99 50%",
    "café crème brûlée à la façon de l'été",
    "naïve Ångström über Straße",
    "a dog 🐶 with sunglasses 😎🔥",
    "東京の夜景, 一只狗, 강아지",
    "Tom &amp; Jerry &lt;3 &amp;amp; &quot;quoted&quot; &#39;x&#39;",
    "  lots   of\tspaces\n\nand\r\nnewlines  ",
    "hyphen-ated well-known state-of-the-art",
    "email@example.com https://example.com/path?q=1&r=2",
    "<|startoftext|> literal specials <|endoftext|>",
    "ünïcödé ÀÉÎÕÜ ΑΒΓ δεζ кириллица",
    "trailing punctuation...?!",
    "'quoted' \"double\" `back`",
    "a a a aaaa aaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "sks sks sks dog dog",
    "x",
    "1",
    "🎉",
    "zero\u200bwidth and non\u00a0breaking",
]


def test_known_ids(tokenizer):
    assert tokenizer.encode("a photo of sks dog") == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert (tokenizer.start_token, tokenizer.end_token) == (49406, 49407)


def test_matches_keras_cv(vocab_path, tokenizer):
    # keras_cv imports TensorFlow; keep that cost inside this one test.
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    reference = SimpleTokenizer(bpe_path=vocab_path)
    for prompt in PROMPTS:
        assert tokenizer.encode(prompt) == reference.encode(prompt), prompt


def test_tokenize_pads_with_end_token(tokenizer):
    out = tokenizer.tokenize("a photo of sks dog")
    assert out.dtype == np.int32 and out.shape == (77,)
    assert out.tolist() == [49406, 320, 1125, 539, 48136, 1929] + [49407] * 71
    empty = tokenizer.tokenize("")
    assert empty.tolist() == [49406] + [49407] * 76


def test_tokenize_batch(tokenizer):
    batch = tokenizer.tokenize_batch(["a photo of sks dog", "", "dog"], max_length=10)
    assert batch.dtype == np.int32 and batch.shape == (3, 10)
    for row, prompt in zip(batch, ["a photo of sks dog", "", "dog"]):
        np.testing.assert_array_equal(row, tokenizer.tokenize(prompt, max_length=10))


def test_length_limit(tokenizer):
    # "dog" is one token, so n words encode to n + 2 ids.
    exact = " ".join(["dog"] * 75)
    assert tokenizer.tokenize(exact).tolist() == [49406] + [1929] * 75 + [49407]
    too_long = "dogs and " + " ".join(["dog"] * 74)
    assert len(tokenizer.encode(too_long)) == 78
    with pytest.raises(PromptTooLongError) as info:
        tokenizer.tokenize(too_long)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "dogs and dog dog" in message and "78" in message and "77" in message
    assert too_long not in message  # the quoted prompt is shortened


def test_bpe_cache_reused(vocab_path):
    fresh = ClipTokenizer(vocab_path)
    first = fresh.encode("an unusualword here")
    assert len(first) == 8 and "unusualword" in fresh._cache  # split into 4 pieces
    # A second encode must read the memoised split, not recompute it.
    fresh._cache["unusualword"] = ("dog</w>",)
    assert fresh.encode("an unusualword here") == [first[0], first[1], 1929, *first[-2:]]


def test_missing_vocab_file(tmp_path):
    missing = tmp_path / "nope" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope") as info:
        resolve_vocab_path(str(missing))
    assert "--vocab_path" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        ClipTokenizer(str(missing))


def test_local_vocab_path_returned(vocab_path):
    assert resolve_vocab_path(vocab_path) == vocab_path


def test_remote_vocab_copied_to_cache(vocab_path, tmp_path, monkeypatch):
    # file:// goes through the same tf.io.gfile branch as gs://.
    monkeypatch.setenv("HOME", str(tmp_path))
    local = resolve_vocab_path("file://" + vocab_path)
    assert local.startswith(str(tmp_path)) and local.endswith("bpe_simple_vocab_16e6.txt.gz")
    with open(local, "rb") as a, open(vocab_path, "rb") as b:
        assert a.read() == b.read()
    assert resolve_vocab_path("file://" + vocab_path) == local
    with pytest.raises(FileNotFoundError, match="nope.gz"):
        resolve_vocab_path("file://" + str(tmp_path / "nope.gz"))


def test_not_gzip_vocab(tmp_path):
    bogus = tmp_path / "bogus_vocab.txt.gz"
    bogus.write_text("#version: 0.2\nh e\n")
    assert resolve_vocab_path(str(bogus)) == str(bogus)
    with pytest.raises(ValueError, match="bogus_vocab"):
        ClipTokenizer(str(bogus))


def test_gzip_but_not_merges(tmp_path):
    short = tmp_path / "short_vocab.txt.gz"
    with gzip.open(short, "wt") as f:
        f.write("#version: 0.2\nh e\nl l\n")
    with pytest.raises(ValueError, match="short_vocab"):
        ClipTokenizer(str(short))


def test_import_does_not_load_tensorflow():
    code = ("import sys, dbdist.text.tokenizer; "
            "assert 'tensorflow' not in sys.modules and 'keras_cv' not in sys.modules "
            "and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
