"""make_tfrecords -> train -> generate on the tiny preset, through their absl flags."""

import json

import h5py
import numpy as np
import pytest
from commands import run_command
from PIL import Image

from dbdist.config import model_config
from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import read_all_examples
from dbdist.formats import safetensors_io
from dbdist.models import build_models
from dbdist.weights.pretrained import load_networks
from dbdist.weights.keras_cv_h5 import read_layer_arrays, save_keras_cv_h5

TRAIN_FLAGS = dict(model="tiny", strategy="one_device", global_batch_size=2, log_every=1, seed=0)
# Every key of a metrics.jsonl line (skipped: 1 where an fp16 overflow skipped the update).
METRIC_KEYS = {"step", "loss", "instance_loss", "prior_loss", "learning_rate", "grad_norm", "skipped", "images_per_sec"}


def _arrays(path):
    return [a for _, arrays in read_layer_arrays(path) for a in arrays]


def test_make_tfrecords_writes_shards_manifest_and_embeddings(records_dir, tokenizer):
    manifest = read_manifest(records_dir)
    assert (manifest.num_instance, manifest.num_class) == (3, 4)
    assert (manifest.preset, manifest.resolution, manifest.embedding_shape) == ("tiny", 64, (77, 32))
    assert manifest.instance_prompt == "a photo of sks ball" and manifest.class_prompt == "a photo of ball"
    assert len(manifest.instance_shards) >= 2 and len(manifest.class_shards) >= 2  # 2-3 kB records, 5 kB shards
    assert manifest.record_format == "pixels" and len(manifest.concepts) == 1
    instance = read_all_examples(records_dir, manifest, "instance")
    np.testing.assert_array_equal(instance["token_ids"][0], tokenizer.tokenize("a photo of sks ball"))
    # The stored embedding is the tiny text encoder's (seed 0) output for the prompt.
    encoder = build_models(model_config("tiny"), ("text_encoder",), seed=0).text_encoder
    expected = encoder.predict_on_batch(tokenizer.tokenize("a photo of sks ball")[None])[0]
    np.testing.assert_allclose(instance["embedding"][0], expected, atol=1e-6)
    assert instance["image"].shape == (3, 64, 64, 3)


@pytest.fixture(scope="module")
def trained_run(records_dir, tmp_path_factory, vocab_path):
    """One tiny train run, shared by the test of what train writes and the generate tests."""
    run_dir = tmp_path_factory.mktemp("run")
    run_command("train", data_dir=records_dir, output_dir=run_dir, max_train_steps=3, learning_rate=1e-3,
                vocab_path=vocab_path, **TRAIN_FLAGS)  # the vocabulary: export/diffusers/tokenizer/
    return run_dir


def test_train_writes_config_metrics_curve_and_keras_cv_export(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["preset"] == "tiny" and config["train"]["global_batch_size"] == 2
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert record.keys() == METRIC_KEYS
        assert record["loss"] == pytest.approx(record["instance_loss"] + record["prior_loss"], rel=1e-5)
        assert record["prior_loss"] > 0
    assert Image.open(trained_run / "loss_curve.png").size[0] > 100
    export = trained_run / "export" / "unet.h5"
    unet = build_models(model_config("tiny"), ("unet",), seed=0).unet
    initial = [np.array(v) for v in unet.weights]
    # Read back by Keras' own legacy h5 loader, which keras-cv's `load_weights("unet.h5")` runs
    # (by layer order): keras-cv's DiffusionModel has SD's sizes built in, so the tiny UNet stands in.
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(export, "r") as f:
        legacy_h5_format.load_weights_from_hdf5_group(f, unet)
    loaded = [np.array(v) for v in unet.weights]
    assert any(not np.array_equal(a, b) for a, b in zip(loaded, initial))  # the trained weights
    for a, b in zip(loaded, _arrays(export)):  # Keras and our reader agree array for array
        np.testing.assert_array_equal(a, b)


def test_learning_rate_zero_exports_the_loaded_weights_bit_for_bit(records_dir, tmp_path):
    weights_dir = tmp_path / "weights"
    start = build_models(model_config("tiny"), ("unet", "vae_encoder"), seed=42)
    save_keras_cv_h5(start.unet, weights_dir / "unet.h5")
    save_keras_cv_h5(start.vae_encoder, weights_dir / "vae_encoder.h5")
    # The text encoder that made records_dir's embeddings (train checks it is this run's).
    save_keras_cv_h5(build_models(model_config("tiny"), ("text_encoder",), seed=0).text_encoder,
                     weights_dir / "text_encoder.h5")
    run_command(
        "train", data_dir=records_dir, output_dir=tmp_path / "run", weights=weights_dir, max_train_steps=2,
        learning_rate=0.0, **TRAIN_FLAGS,
    )
    before, after = _arrays(weights_dir / "unet.h5"), _arrays(tmp_path / "run" / "export" / "unet.h5")
    assert len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.slow  # only in make test-all: a variant of make_tfrecords -> train above, without class images
def test_instance_only_training(sample_images, vocab_path, tmp_path):
    run_command(
        "make_tfrecords", model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
        output_dir=tmp_path / "records", vocab_path=vocab_path,
    )
    assert read_manifest(tmp_path / "records").num_class == 0
    run_command("train", data_dir=tmp_path / "records", output_dir=tmp_path / "run", max_train_steps=2, **TRAIN_FLAGS)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["prior_loss"] == 0 and r["loss"] == r["instance_loss"] for r in records)


@pytest.mark.slow  # only in make test-all: a precision variant of the train run above
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_loss(records_dir, tmp_path, precision):
    run_command(
        "train", data_dir=records_dir, output_dir=tmp_path, max_train_steps=2, mixed_precision=precision,
        learning_rate=1e-4, **TRAIN_FLAGS,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)
    # Variables stay fp32 under mixed precision, and are exported as such (keras-cv's dtype).
    assert all(a.dtype == np.float32 for a in _arrays(tmp_path / "export" / "unet.h5"))


def test_generate_writes_pngs_and_grid_deterministically(trained_run, vocab_path, tmp_path):
    common = dict(run_dir=trained_run, prompt="a photo of sks ball", num_steps=3, seed=7, vocab_path=vocab_path)
    run_command("generate", num_images=3, batch_size=2, output_dir=tmp_path / "a", **common)
    run_command("generate", num_images=2, batch_size=1, output_dir=tmp_path / "b", **common)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["grid.png", "image_000.png", "image_001.png", "image_002.png"]
    first = np.asarray(Image.open(tmp_path / "a" / "image_000.png"))
    assert first.shape == (64, 64, 3)
    # Image i depends on (seed, i) only, not on the batch it was drawn in.
    for name in ("image_000.png", "image_001.png"):
        a = np.asarray(Image.open(tmp_path / "a" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "b" / name)).astype(int)
        assert np.abs(a - b).max() <= 1  # batch-size-dependent CPU kernels may flip a rounding
    assert Image.open(tmp_path / "a" / "grid.png").size == (128, 128)


def test_generate_negative_prompt_and_unet_weights_flag(trained_run, vocab_path, tmp_path):
    # seed 0 both draws the noise and, for tiny, builds the networks the run started from (TRAIN_FLAGS).
    common = dict(prompt="a photo of sks ball", num_steps=2, num_images=1, seed=0, vocab_path=vocab_path)
    unet_file = trained_run / "export" / "unet.h5"
    run_command("generate", model="tiny", unet_weights=unet_file, output_dir=tmp_path / "file", **common)
    run_command("generate", model="tiny", unet_weights=unet_file, negative_prompt="blurry",
                output_dir=tmp_path / "negative", **common)
    run_command("generate", model="tiny", output_dir=tmp_path / "base", **common)  # the untrained UNet
    run_command("generate", run_dir=trained_run, output_dir=tmp_path / "run", **common)  # its export is that file
    image = {name: np.asarray(Image.open(tmp_path / name / "image_000.png")) for name in ("file", "negative", "base", "run")}
    assert not np.array_equal(image["file"], image["negative"])
    assert not np.array_equal(image["file"], image["base"])  # the file's UNet drew it...
    np.testing.assert_array_equal(image["file"], image["run"])  # ...as the run dir's export does, bit for bit


def test_train_exports_a_diffusers_folder_and_a_single_file_that_generate_reads(trained_run, vocab_path, tmp_path):
    export = trained_run / "export"
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json"):
        assert (export / "diffusers" / name).is_file(), name
    header = safetensors_io.read_header(export / "model.safetensors")
    assert {dtype for dtype, _ in header.values()} == {"F16"}  # --export_dtype's default
    assert any(k.startswith("model.diffusion_model.") for k in header)
    assert any(k.startswith("first_stage_model.") for k in header)
    # The folder holds the trained UNet exactly (fp32): as loaded, it is export/unet.h5 bit for bit.
    unet = load_networks(model_config("tiny"), ("unet",), weights_dir=str(export / "diffusers")).unet
    for a, b in zip([np.array(v) for v in unet.weights], _arrays(export / "unet.h5"), strict=True):
        assert a.tobytes() == b.tobytes()
    common = dict(prompt="a photo of sks ball", num_steps=2, num_images=1, seed=0, vocab_path=vocab_path)
    run_command("generate", output_dir=tmp_path / "run", run_dir=trained_run, **common)
    run_command("generate", output_dir=tmp_path / "diffusers", weights=export / "diffusers", model="tiny", **common)
    run_command("generate", output_dir=tmp_path / "single", weights=export / "model.safetensors", model="tiny", **common)
    image = {name: np.asarray(Image.open(tmp_path / name / "image_000.png")).astype(int)
             for name in ("run", "diffusers", "single")}
    # Imported weights run with diffusers' maths (exact GELU, SD's norm epsilons; the run used keras-cv's), and
    # the single file holds fp16 weights: measured at most 1 level of 255 apart from the run's image for both.
    for name in ("diffusers", "single"):
        assert np.abs(image["run"] - image[name]).max() <= 2, name
