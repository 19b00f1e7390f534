"""Shared pytest fixtures for dbdist's tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vocab_path():
    """The CLIP BPE vocabulary, kept outside the repo in ../shared/data/."""
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    path = shared / "data" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.fail(f"CLIP BPE vocabulary not found at {path}; tests need "
                    "bpe_simple_vocab_16e6.txt.gz in <repo>/../shared/data/.")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(vocab_path):
    from dbdist.text.tokenizer import ClipTokenizer

    return ClipTokenizer(vocab_path)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """(instance_dir, class_dir) with 3 subject and 4 class images, 64 px."""
    from dbdist.demo_images import write_demo_images

    root = tmp_path_factory.mktemp("images")
    instance_dir, class_dir = root / "sks", root / "ball"
    write_demo_images(str(instance_dir), str(class_dir), num_instance=3, num_class=4, size=64, seed=0)
    return instance_dir, class_dir


@pytest.fixture(scope="session")
def records_dir(tmp_path_factory, sample_images, vocab_path):
    """Tiny-preset records with prior preservation, made once by make_tfrecords."""
    from commands import run_command

    out = tmp_path_factory.mktemp("records")
    run_command(
        "make_tfrecords",
        model="tiny",
        instance_dir=sample_images[0],
        instance_prompt="a photo of sks ball",
        class_dir=sample_images[1],
        class_prompt="a photo of ball",
        output_dir=out,
        vocab_path=vocab_path,
        max_shard_mb=0.005,  # 1-2 records a shard: several shards per kind, as large sets have
    )
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """The tiny preset's networks as the TF engine draws them (the records' encoders), saved as .h5
    so that the JAX engine, whose own random draw differs, loads the same ones."""
    from dbdist.config import model_config
    from dbdist.weights.keras_cv_h5 import save_keras_cv_h5
    from dbdist.weights.pretrained import load_networks

    folder = tmp_path_factory.mktemp("tiny_weights")
    models = load_networks(model_config("tiny"), ("unet", "vae_encoder", "vae_decoder", "text_encoder"))
    for name in ("unet", "vae_encoder", "vae_decoder", "text_encoder"):
        save_keras_cv_h5(getattr(models, name), folder / f"{name}.h5")
    return folder


@pytest.fixture(scope="session")
def gcs_emulator():
    """A started local GCS (tests/gcs_emulator.py) for commands run with gcs_emulator.run(argv).

    Where it cannot run (not root, no `unshare`, port 443 taken, package missing) this errors:
    tests that need gs:// fail rather than skip.
    """
    from gcs_emulator import GcsEmulator

    with GcsEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def latents_dir(tmp_path_factory, sample_images, vocab_path):
    """The same images as `records_dir`, stored as cached latents with their flipped copies."""
    from commands import run_command

    out = tmp_path_factory.mktemp("latents")
    run_command("make_tfrecords", model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
                class_dir=sample_images[1], class_prompt="a photo of ball", output_dir=out, vocab_path=vocab_path,
                max_shard_mb=0.025, cache_latents=True, random_flip=True)
    return out
