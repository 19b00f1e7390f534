"""Tests for dbdist.text.tokenizer: ids must match CLIP's tokenizer (keras-cv's, after ftfy)."""

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
    # Text ftfy changes (CLIP cleans it; keras-cv does not):
    "the dog\u2019s \u201cbest\u201d toy",
    "cafe\u0301 cre\u0300me",
    "\ufb01sh \ufb02ower",
    "\uff53\uff4b\uff53 \uff24\uff2f\uff27",
    "caf\u00c3\u00a9 mojibake",
]

KNOWN_IDS = [49406, 320, 1125, 539, 48136, 1929, 49407]  # "a photo of sks dog", from shared/data/README.md


def test_known_ids(tokenizer):
    assert tokenizer.encode("a photo of sks dog") == KNOWN_IDS
    assert (tokenizer.start_token, tokenizer.end_token) == (49406, 49407)


def test_matches_clip_that_is_keras_cv_after_ftfy(vocab_path, tokenizer):
    # OpenAI CLIP's encode = keras-cv's SimpleTokenizer.encode on ftfy.fix_text(prompt): keras-cv
    # copies CLIP's html.unescape / whitespace / lower() steps but leaves ftfy out.
    # keras_cv imports TensorFlow; keep that cost inside this one test.
    import ftfy
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    reference = SimpleTokenizer(bpe_path=vocab_path)
    for prompt in PROMPTS:
        assert tokenizer.encode(prompt) == reference.encode(ftfy.fix_text(prompt)), prompt
    # Where CLIP's cleaning matters, the expected ids are keras-cv's for the text ftfy gives.
    for written, as_clip_reads_it in [
        ("the dog\u2019s toy", "the dog's toy"),  # curly apostrophe, as caption files have
        ("\u201cquoted\u201d", '"quoted"'),
        ("cafe\u0301", "caf\u00e9"),  # decomposed -> composed (NFC)
        ("\ufb01sh \ufb02ower", "fish flower"),  # ligatures
        ("caf\u00c3\u00a9", "caf\u00e9"),  # UTF-8 read as Latin-1
    ]:
        assert tokenizer.encode(written) == reference.encode(as_clip_reads_it), written


@pytest.mark.parametrize("written, same_as", [
    ("the dog\u2019s toy", "the dog's toy"),
    ("a cafe\u0301", "a caf\u00e9"),
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ("Tom &amp;amp; Jerry", "Tom & Jerry"),
    ("  a\tphoto \n of  ", "a photo of"),
])
def test_text_that_reads_the_same_encodes_the_same(tokenizer, written, same_as):
    assert tokenizer.encode(written) == tokenizer.encode(same_as)


def test_full_width_and_ligature_letters_encode_as_their_ascii(tokenizer):
    # ftfy narrows full-width letters and splits ligatures; before, each became 3 UTF-8 byte tokens.
    full_width = "\uff41 \uff50\uff48\uff4f\uff54\uff4f \uff4f\uff46 \uff53\uff4b\uff53 \uff24\uff2f\uff27"
    assert tokenizer.encode(full_width) == KNOWN_IDS  # "ａ ｐｈｏｔｏ ｏｆ ｓｋｓ ＤＯＧ"
    assert tokenizer.encode("a photo o\ufb00") == tokenizer.encode("a photo off")  # "ﬀ" ligature


def test_tokenize_pads_with_end_token(tokenizer):
    out = tokenizer.tokenize("a photo of sks dog")
    assert out.dtype == np.int32 and out.shape == (77,)
    assert out.tolist() == [49406, 320, 1125, 539, 48136, 1929] + [49407] * 71
    empty = tokenizer.tokenize("")
    assert empty.tolist() == [49406] + [49407] * 76


def test_tokenize_pads_with_the_models_own_pad_id(tokenizer):
    # SD 2.x's OpenCLIP tokenizer pads with 0 after the end token; SD 1.x's CLIP with the end token.
    assert tokenizer.tokenize("a photo of sks dog", 9, pad_token_id=0).tolist() == [
        49406, 320, 1125, 539, 48136, 1929, 49407, 0, 0]
    assert tokenizer.tokenize("", 4, pad_token_id=0).tolist() == [49406, 49407, 0, 0]
    assert tokenizer.tokenize_batch(["dog"], 4, pad_token_id=0).tolist() == [[49406, 1929, 49407, 0]]


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


def test_remote_vocab_that_is_another_file_is_refused(vocab_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    other = tmp_path / "bpe_simple_vocab_16e6.txt.gz"  # right name, right format, other merges
    with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    with gzip.open(other, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:1] + lines[2:] + lines[1:2]))
    with pytest.raises(ValueError, match="924691ac288e54409236115652ad4aa2") as info:
        resolve_vocab_path("file://" + str(other))
    assert str(other) in str(info.value) and "SHA-256" in str(info.value)
    assert not list((tmp_path / "home").rglob("*bpe_simple_vocab*"))  # nothing cached


def test_damaged_cached_vocab_is_fetched_again(vocab_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    local = resolve_vocab_path("file://" + vocab_path)
    with open(local, "wb") as f:
        f.write(b"truncated")
    assert resolve_vocab_path("file://" + vocab_path) == local
    with open(local, "rb") as a, open(vocab_path, "rb") as b:
        assert a.read() == b.read()


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
