"""VAE, text encoder and tokenizer formats against diffusers' and transformers' own files (no torch here).

The fixtures in tests/fixtures/encoders/ were written by diffusers / transformers
(tests/fixtures/diffusers_encoder_fixtures.py): small random models of SD's kinds in the
diffusers folder layout and the original single-file layout, their outputs on fixed inputs,
tokenizer ids, and the full-size SD 1.5 / 2.1 key names and shapes.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

from dbdist.config import model_config
from dbdist.errors import UserError
from dbdist.formats import text_encoder_keys, tokenizer_files, vae_keys
from dbdist.models import build_models
from dbdist.text.tokenizer import ClipTokenizer
from encoder_formats import (FIXTURES, KINDS, LAYOUTS, build_small, load_into, load_text_encoder, load_vae,
                             small_config, tensors_of, text_file, vae_file)

# Float32 round-off: the measured differences are <= 3.6e-6 on outputs of magnitude <= 4 (the VAE decoder's
# includes diffusers' latents / 0.18215 against ours * (1 / 0.18215)); 2e-5 leaves 5x room. With keras-cv's
# settings instead (VAE epsilon 1e-5, tanh GELU) they are 4.9e-5 (VAE) and 9.2e-4 (SD 2.x text): above it.
ATOL = 2e-5


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(FIXTURES, "reference.npz"))


@pytest.fixture(scope="module")
def networks():
    """The fixtures' networks, built once (building dominates these tests); each test loads all their weights."""
    return build_small()


@pytest.fixture(scope="module")
def other_networks():
    keras.utils.set_random_seed(4)
    return build_small()


def _key_maps(networks, layout):
    """{network: [TensorKey, ...]} of `networks` in `layout`."""
    config = small_config()
    encoder, decoder = networks["vae"]
    maps = {"vae_encoder": vae_keys.encoder_key_map(encoder, config, layout),
            "vae_decoder": vae_keys.decoder_key_map(decoder, config, layout)}
    for kind in KINDS:
        maps[kind] = text_encoder_keys.key_map(networks[kind], small_config(kind), layout)
    return maps


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vae_import_gives_diffusers_outputs(layout, reference, networks):
    encoder, decoder = load_vae(*networks["vae"], layout)
    mean, log_variance = encoder(reference["vae_pixels"])
    np.testing.assert_allclose(np.asarray(mean), reference["vae_mean"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(log_variance), reference["vae_log_variance"], rtol=0, atol=ATOL)
    decoded = decoder(reference["vae_scaled_latents"])
    np.testing.assert_allclose(np.asarray(decoded), reference["vae_decoded"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_text_encoder_import_gives_transformers_outputs(kind, layout, reference, networks):
    # sd1's folder has the hub's `text_model.*` keys, sd2's transformers 5.x's unprefixed ones; sd2's
    # single file has OpenCLIP's fused q/k/v and the extra block, projection and logit scale SD ignores.
    model = load_text_encoder(networks[kind], kind, layout)
    hidden = model(reference[f"{kind}_text_ids"])
    np.testing.assert_allclose(np.asarray(hidden), reference[f"{kind}_text_hidden"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_has_exactly_the_fixture_files_keys_and_shapes(layout, networks):
    """Our export of the small models holds what diffusers' files hold, no more, no less."""
    maps = _key_maps(networks, layout)
    exported = {k: tuple(v.shape) for k, v in
                tensors_of(maps["vae_encoder"] + maps["vae_decoder"]).items()}
    assert exported == {k: tuple(v.shape) for k, v in load_file(vae_file(layout)).items()}
    for kind in KINDS:
        exported = {k: tuple(v.shape) for k, v in tensors_of(maps[kind]).items()}
        in_file = text_encoder_keys.canonical_tensors(load_file(text_file(kind, layout)), layout)
        ignored = text_encoder_keys.ignored_keys(small_config(kind), layout)
        assert exported == {k: tuple(v.shape) for k, v in in_file.items() if not ignored(k)}, kind


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_of_export_is_bit_identical(layout, networks, other_networks):
    """Export then import into networks of other random weights gives every variable back bit for bit
    (sd2's original layout goes through OpenCLIP's fused q/k/v)."""
    targets = _key_maps(other_networks, layout)
    for network, keys in _key_maps(networks, layout).items():
        load_into(targets[network], tensors_of(keys), "export")
        for source, target in zip(keys, targets[network], strict=True):
            assert np.array_equal(np.asarray(source.variable), np.asarray(target.variable)), (network, source.key)


def _legacy_forms(tensors):
    """diffusers < 0.14's names for the mid attention (query/key/value/proj_attn), some with 1x1-conv shapes,
    and original-layout files whose mid attention weights are Linear (C, C)."""
    legacy = {}
    for key, array in tensors.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".mid_block.attentions.0." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                array = array[:, :, None, None] if array.ndim == 2 else array
        if ".mid.attn_1." in key and array.ndim == 4:
            array = array[:, :, 0, 0]
        legacy[key] = array
    return legacy


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vae_attention_in_other_tools_forms_loads(layout, reference, networks):
    legacy = _legacy_forms(load_file(vae_file(layout)))
    assert legacy.keys() != load_file(vae_file(layout)).keys() or layout == "original"
    config = small_config()
    encoder = networks["vae"][0]
    load_into(vae_keys.encoder_key_map(encoder, config, layout), vae_keys.canonical_tensors(legacy, layout), "legacy")
    mean = np.asarray(encoder(reference["vae_pixels"])[0])
    np.testing.assert_allclose(mean, reference["vae_mean"], rtol=0, atol=ATOL)


def test_configs_read_from_the_fixture_folders_are_the_fixtures_and_ours_read_back():
    """diffusers' vae/config.json and transformers' text_encoder/config.json give the fixtures' dbdist configs,
    computing as diffusers does; what dbdist writes (diffusers_config) reads back to the config it came from."""
    def read(*parts):
        with open(os.path.join(FIXTURES, *parts)) as f:
            return json.load(f)

    base = model_config("sd-v1")
    assert vae_keys.config_from_diffusers(read("vae", "config.json"), base.vae) == small_config().vae
    for kind in KINDS:
        got = text_encoder_keys.config_from_diffusers(read(f"text_encoder_{kind}", "config.json"), base.text_encoder)
        assert got == small_config(kind).text_encoder, kind
        config = small_config(kind)
        assert text_encoder_keys.config_from_diffusers(
            text_encoder_keys.diffusers_config(config), base.text_encoder) == config.text_encoder
    assert vae_keys.config_from_diffusers(vae_keys.diffusers_config(small_config()), base.vae) == small_config().vae
    with pytest.raises(UserError, match=r"te/config\.json has hidden_act='relu'"):
        text_encoder_keys.config_from_diffusers({**read("text_encoder_sd1", "config.json"), "hidden_act": "relu"},
                                                base.text_encoder, "te/config.json")


@pytest.fixture(scope="module")
def tokenizer_record():
    with open(os.path.join(FIXTURES, "tokenizer.json")) as f:
        return json.load(f)


def test_tokenizer_folder_gives_transformers_ids(tmp_path, vocab_path, tokenizer_record):
    """Our tokenizer/ files are the bytes transformers' CLIPTokenizer read in the fixture script; read
    back by dbdist they give its ids, padded as each family's tokenizer pads, and the gz vocabulary's ids."""
    from_gz = ClipTokenizer(vocab_path)
    for kind, pad in (("sd1", tokenizer_files.SD1_PAD_TOKEN), ("sd2", tokenizer_files.SD2_PAD_TOKEN)):
        # With pad token "!" transformers splits every "!" of a prompt out as that special token (id 0);
        # OpenCLIP's tokenizer, which SD 2 was trained with (and dbdist), BPE-encodes it ("!!!" is 995).
        # Those prompts are compared for SD 1.x only.
        rows = [i for i, p in enumerate(tokenizer_record["prompts"]) if kind == "sd1" or "!" not in p]
        prompts = [tokenizer_record["prompts"][i] for i in rows]
        expected = [tokenizer_record[f"{kind}_ids"][i] for i in rows]
        folder = tmp_path / kind
        tokenizer_files.write_tokenizer_folder(str(folder), vocab_path, pad_token=pad)
        for name, sha256 in tokenizer_record["sha256"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256, name
        tokenizer = tokenizer_files.load_tokenizer_folder(str(folder))
        assert tokenizer.pad_token == tokenizer_record[f"{kind}_pad_token_id"]
        assert tokenizer.tokenize_batch(prompts).tolist() == expected
        assert [tokenizer.encode(p) for p in prompts] == [from_gz.encode(p) for p in prompts]


def test_tokenizer_folder_without_merges_is_refused_naming_it(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(UserError, match=f"tokenizer folder {tmp_path} has no merges.txt"):
        tokenizer_files.load_tokenizer_folder(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("network", ["vae", "sd1_text_encoder", "sd2_text_encoder"])
def test_full_size_export_keys_and_shapes_equal_diffusers(network):
    """Full-size sd-v1 / sd-v2 networks: every key and shape of our export in both layouts equals the
    fixture's, recorded from diffusers' SD 1.5 / 2.1 models and diffusers' own conversion script."""
    with open(os.path.join(FIXTURES, "full_size_keys.json")) as f:
        full = json.load(f)
    config = model_config("sd-v2" if network.startswith("sd2") else "sd-v1")
    if network == "vae":
        models = build_models(config, ("vae_encoder", "vae_decoder"))
        key_map = lambda layout: (vae_keys.encoder_key_map(models.vae_encoder, config, layout)
                                  + vae_keys.decoder_key_map(models.vae_decoder, config, layout))
    else:
        text_encoder = build_models(config, ("text_encoder",)).text_encoder
        key_map = lambda layout: text_encoder_keys.key_map(text_encoder, config, layout)
    for layout in LAYOUTS:
        exported = sorted({k.key: list(k.shape) for k in key_map(layout)}.items())
        assert [list(item) for item in exported] == full[f"{network}/{layout}"], layout


def _prompt_token_ids(records_dir):
    """Sorted token-id rows of a records folder's prompt table."""
    import tensorflow as tf

    from dbdist.data import features

    rows = []
    for path in sorted(records_dir.glob("prompts-*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            rows.append(tuple(tf.train.Example.FromString(record).features.feature[features.TOKEN_IDS].int64_list.value))
    return sorted(rows)


@pytest.mark.slow  # exports tiny's whole pipeline, then two make_tfrecords runs (~1-2 min on 2 loaded cores)
def test_make_tfrecords_tokenizes_with_a_diffusers_folders_tokenizer(tmp_path, vocab_path, sample_images, monkeypatch):
    from commands import run_command

    from dbdist.formats.export import export_formats
    from dbdist.weights.pretrained import load_networks

    tiny = model_config("tiny")
    export_formats(tmp_path / "base", tiny, {"unet": load_networks(tiny, ("unet",)).unet}, vocab_path=vocab_path,
                   export_dtype="fp32")
    folder = tmp_path / "base" / "diffusers"
    assert (folder / "tokenizer" / "vocab.json").is_file()
    common = dict(model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball, ünïcode!")
    run_command("make_tfrecords", output_dir=tmp_path / "bpe", vocab_path=vocab_path, **common)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded keras-cv's CLIP vocabulary instead of reading the folder's tokenizer/")

    # No --vocab_path and no download: only the folder's tokenizer/ can encode the prompts.
    monkeypatch.setattr(keras.utils, "get_file", no_download)
    run_command("make_tfrecords", output_dir=tmp_path / "folder", weights=folder, **common)
    ids = _prompt_token_ids(tmp_path / "folder")
    assert ids and ids == _prompt_token_ids(tmp_path / "bpe")
