"""--train_token_embeddings (pivotal tuning): only the identifier's row of the token table trains, in both engines."""

import json

import numpy as np
import pytest
from commands import run_command
from distributed_runs import exported_arrays, start_train, wait_train

from dbdist.errors import UserError

SKS = 48136  # "sks</w>" in CLIP's BPE vocabulary
FLAGS = dict(model="tiny", max_train_steps=3, global_batch_size=2, learning_rate=1e-4, text_encoder_learning_rate=1e-3,
             train_token_embeddings="sks", checkpoint_every=3, log_every=1)


def _split_identifier_row(arrays):
    """(the identifier's row, every other text-encoder weight as bytes): the token table is the first weight
    (keras-cv's layer order)."""
    table = arrays[0]
    assert table.shape[0] == 49408
    return table[SKS], [np.delete(table, SKS, 0).tobytes()] + [a.tobytes() for a in arrays[1:]]


@pytest.fixture(scope="module")
def tf_run(records_dir, vocab_path, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("token_tf")
    run_command("train", data_dir=records_dir, output_dir=out, vocab_path=vocab_path, weights=tiny_weights, **FLAGS)
    return out


def test_only_the_identifier_row_trains(tf_run):
    from dbdist.config import model_config
    from dbdist.models import build_models

    initial = [np.asarray(v) for v in build_models(model_config("tiny"), ("text_encoder",), seed=0).text_encoder.weights]
    trained = exported_arrays(tf_run, "text_encoder.h5")
    assert len(trained) == len(initial)
    row, rest = _split_identifier_row(trained)
    initial_row, initial_rest = _split_identifier_row(initial)
    assert np.any(row != initial_row)  # the identifier's row moved
    # Everything else (the other words, the positions, the transformer) is bit for bit the base model's:
    # no weight decay reached the frozen rows.
    assert rest == initial_rest
    config = json.loads((tf_run / "config.json").read_text())["train"]
    assert config["train_token_embeddings"] == ["sks"] and config["trained_token_ids"] == [SKS]
    assert config["train_text_encoder"] is False


@pytest.mark.slow  # a JAX training run beside the TF one
def test_the_jax_engine_trains_the_same_row_the_same_way(tf_run, records_dir, vocab_path, tiny_weights, tmp_path):
    log = tmp_path / "jax.log"
    wait_train(start_train(log, extra_env={"JAX_PLATFORMS": "cpu"}, engine="jax", data_dir=records_dir,
                           weights=tiny_weights,
                           output_dir=tmp_path / "jax", vocab_path=vocab_path, **FLAGS), log)
    for name in ("unet.h5", "text_encoder.h5"):
        a, b = exported_arrays(tf_run, name), exported_arrays(tmp_path / "jax", name)
        assert len(a) == len(b) > 0
        difference = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        print(f"\n[jax vs tf, --train_token_embeddings] {name}: max|dw| = {difference:.3g}")
        assert difference <= 5e-6, name  # as tests/test_jax_engine.py; 3 AdamW steps move the row ~3e-3
    # Outside the identifier's row both text encoders are still the base one, bit for bit (no weight decay there).
    assert _split_identifier_row(a)[1] == _split_identifier_row(b)[1]

@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(train_text_encoder=True), "train_text_encoder trains more of it: choose one"),
        (dict(lora_rank=2, lora_text_encoder=True), "lora_text_encoder trains more of it: choose one"),
        (dict(lora_rank=2), "with lora_rank: LoRA's files hold adapters"),
        (dict(train_token_embeddings="sks,,ball"), "'' makes no tokens"),
    ],
)
def test_bad_train_token_embeddings_are_refused(records_dir, vocab_path, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        run_command("train", data_dir=records_dir, output_dir=tmp_path / "run", vocab_path=vocab_path,
                    **{**FLAGS, **flags})


@pytest.mark.slow  # a 2-replica training run
def test_two_mirrored_replicas_train_the_row_as_one_device(tf_run, records_dir, vocab_path, tiny_weights, tmp_path):
    # Replicas mask their own gradients before the sum, and the weight-decay exclusion must find the
    # mirrored table: the frozen rows stay bit for bit, the row matches one device.
    log = tmp_path / "mirrored.log"
    wait_train(start_train(log, strategy="mirrored", num_cpu_devices=2, data_dir=records_dir, weights=tiny_weights,
                           output_dir=tmp_path / "mirrored", vocab_path=vocab_path, **FLAGS), log)
    assert "strategy mirrored with 2 replica(s)" in log.read_text()
    (one_row, one_rest), (two_row, two_rest) = (_split_identifier_row(exported_arrays(run, "text_encoder.h5"))
                                                for run in (tf_run, tmp_path / "mirrored"))
    assert np.abs(one_row - two_row).max() <= 1e-6
    assert one_rest == two_rest
