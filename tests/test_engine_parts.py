"""Engine pieces without a training run: schedules, TF_CONFIG, text-encoder training, summaries."""

import json

import numpy as np
import pytest
from commands import run_command

from dbdist.training.schedules import WarmupThenDecay
from dbdist.training.strategy import read_tf_config


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("constant_with_warmup", [0.0, 0.5, 1.0, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 2 / 3, 1 / 3]),
        ("cosine", [0.0, 0.5, 1.0, 0.75, 0.25]),
        ("polynomial", [0.0, 0.5, 1.0, 2 / 3, 1 / 3]),  # power 1 by default; its 1e-7 floor is within atol
    ],
)
def test_warmup_then_decay(kind, expected):
    schedule = WarmupThenDecay(1.0, kind, warmup_steps=2, total_steps=5)
    got = [float(schedule(step)) for step in range(5)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_schedule_errors():
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        WarmupThenDecay(1.0, "step")
    with pytest.raises(ValueError, match="constant_with_warmup"):
        WarmupThenDecay(1.0, "constant", warmup_steps=3, total_steps=10)
    with pytest.raises(ValueError, match="lr_warmup_steps must be in"):
        WarmupThenDecay(1.0, "linear", warmup_steps=20, total_steps=10)


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "needs TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in its cluster"),
    ],
)
def test_malformed_tf_config(monkeypatch, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message):
        read_tf_config()


@pytest.mark.slow  # only in make test-all: train with --train_text_encoder and validation, then generate: a feature variant
def test_text_encoder_training_exports_it_and_generate_uses_it(records_dir, vocab_path, tmp_path, monkeypatch):
    from distributed_runs import exported_arrays

    from dbdist import generate

    from dbdist.config import model_config
    from dbdist.models import build_models

    run_command(
        "train", model="tiny", data_dir=records_dir, output_dir=tmp_path / "run", max_train_steps=2, global_batch_size=2,
        train_text_encoder=True, text_encoder_learning_rate=1e-3, learning_rate=1e-3, validation_every=2,
        validation_prompt="a photo of sks ball", vocab_path=vocab_path, checkpoint_every=2,
    )
    initial = build_models(model_config("tiny"), ("text_encoder",), seed=0).text_encoder
    trained = exported_arrays(tmp_path / "run", "text_encoder.h5")
    assert any(not np.array_equal(a, np.asarray(v)) for a, v in zip(trained, initial.weights))
    # What people watch: TensorBoard events and the validation grid.
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "validation" / "step-000002.png").exists()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["train_text_encoder"] is True
    # The networks generate samples with are the ones it loads: catch them on the way.
    loaded = []
    load_networks = generate.load_networks

    def keep_what_is_loaded(*args, **kwargs):
        loaded.append(load_networks(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(generate, "load_networks", keep_what_is_loaded)
    run_command("generate", run_dir=tmp_path / "run", prompt="a photo of sks ball", num_images=1, num_steps=2,
                output_dir=tmp_path / "samples", vocab_path=vocab_path)
    assert (tmp_path / "samples" / "grid.png").exists()
    used = [np.asarray(v) for v in loaded[0].text_encoder.weights]
    assert len(used) == len(trained) > 0
    for a, b in zip(used, trained):  # the trained text encoder, not the one the run started from
        np.testing.assert_array_equal(a, b)
