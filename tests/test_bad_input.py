"""Each bad input stops the command with an error naming the file or value, and leaves nothing that looks complete."""

import re
import shutil

import pytest
from absl import app
from commands import run_command

from dbdist.config import TextEncoderConfig
from dbdist.data import features
from dbdist.models import build_text_encoder
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5


@pytest.fixture
def instance_copy(sample_images, tmp_path):
    folder = tmp_path / "instance"
    shutil.copytree(sample_images[0], folder)
    return folder


def _make(instance_dir, out, vocab_path, **extra):
    flags = dict(model="tiny", instance_dir=instance_dir, instance_prompt="a photo of sks ball", output_dir=out)
    run_command("make_tfrecords", vocab_path=vocab_path, **{**flags, **extra})


def _assert_nothing_complete(out):
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tfrecord")) if out.exists() else True


@pytest.mark.parametrize(
    "name, content",
    [
        ("broken.jpg", b"this is not a jpeg"),
        ("truncated.png", None),  # filled in below: a real PNG cut in half
    ],
)
def test_corrupt_or_truncated_image_is_named(instance_copy, tmp_path, vocab_path, name, content):
    if content is None:
        content = (next(instance_copy.glob("*.png"))).read_bytes()[:300]
    (instance_copy / name).write_bytes(content)
    with pytest.raises(ValueError, match=name):
        _make(instance_copy, tmp_path / "out", vocab_path)
    _assert_nothing_complete(tmp_path / "out")


def test_non_image_file_is_named(instance_copy, tmp_path, vocab_path):
    (instance_copy / "notes.json").write_text("hello")
    with pytest.raises(ValueError, match="notes.json"):
        _make(instance_copy, tmp_path / "out", vocab_path)
    _assert_nothing_complete(tmp_path / "out")


def test_empty_folder_is_named(tmp_path, vocab_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        _make(empty, tmp_path / "out", vocab_path)
    _assert_nothing_complete(tmp_path / "out")


def test_missing_prompts(instance_copy, sample_images, tmp_path, vocab_path):
    with pytest.raises(app.UsageError, match="--instance_prompt"):
        _make(instance_copy, tmp_path / "out", vocab_path, instance_prompt="")
    with pytest.raises(ValueError, match="--class_prompt"):
        _make(instance_copy, tmp_path / "out", vocab_path, class_dir=sample_images[1])
    _assert_nothing_complete(tmp_path / "out")


def test_prompt_longer_than_77_tokens_is_named(instance_copy, tmp_path, vocab_path):
    prompt = "a photo of sks ball " + "very " * 80
    with pytest.raises(ValueError, match="a photo of sks ball very"):
        _make(instance_copy, tmp_path / "out", vocab_path, instance_prompt=prompt)


def test_resolution_not_multiple_of_8(instance_copy, tmp_path, vocab_path):
    with pytest.raises(ValueError, match="multiple of 8, got 500"):
        _make(instance_copy, tmp_path / "out", vocab_path, resolution=500)


def test_weights_of_wrong_shape_are_named(instance_copy, tmp_path, vocab_path):
    weights = tmp_path / "weights"
    wrong = build_text_encoder(TextEncoderConfig(width=64, num_layers=2, num_heads=2))
    save_keras_cv_h5(wrong, weights / "text_encoder.h5")
    with pytest.raises(ValueError, match=r"text_encoder\.h5.*expects shape \(49408, 32\).*\(49408, 64\)"):
        _make(instance_copy, tmp_path / "out", vocab_path, weights=weights)
    _assert_nothing_complete(tmp_path / "out")


def test_missing_weights_file_is_named(instance_copy, tmp_path, vocab_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder.h5"):
        _make(instance_copy, tmp_path / "out", vocab_path, weights=weights)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _make(instance_copy, tmp_path / "out", vocab_path, weights=tmp_path / "nowhere")
    _assert_nothing_complete(tmp_path / "out")


def test_failure_while_writing_leaves_no_manifest(instance_copy, tmp_path, vocab_path, monkeypatch):
    out = tmp_path / "out"
    _make(instance_copy, out, vocab_path)  # a complete earlier run
    assert (out / "manifest.json").exists()
    calls = []

    def failing(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(**kwargs)

    real = features.serialize_example
    monkeypatch.setattr(features, "serialize_example", failing)
    with pytest.raises(OSError, match="disk full"):
        _make(instance_copy, out, vocab_path)
    _assert_nothing_complete(out)  # the old manifest went first, the new one never came
    assert not list(out.glob(".tmp-*"))


def test_train_refuses_records_of_another_preset(records_dir, tmp_path):
    with pytest.raises(ValueError, match="tiny.*sd-v1"):
        run_command("train", model="sd-v1", data_dir=records_dir, output_dir=tmp_path / "run", max_train_steps=1)
    assert not (tmp_path / "run").exists()


def test_train_without_records(tmp_path):
    with pytest.raises(Exception, match="manifest.json"):
        run_command("train", model="tiny", data_dir=tmp_path, output_dir=tmp_path / "run", max_train_steps=1)


def test_generate_needs_a_finished_run(tmp_path, vocab_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_command("generate", run_dir=tmp_path, prompt="x", output_dir=tmp_path / "out", vocab_path=vocab_path)
