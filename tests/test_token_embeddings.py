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


def _token_table_index(arrays):
    # The text encoder's first weight is its token table (keras-cv's layer order).
    assert arrays[0].shape[0] == 49408
    return 0


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
    table = _token_table_index(trained)
    moved_rows = np.flatnonzero(np.any(trained[table] != initial[table], axis=1))
    assert moved_rows.tolist() == [SKS]
    # Everything else (the other words, the positions, the transformer) is bit for bit the base model's:
    # no weight decay reached the frozen rows.
    for i, (a, b) in enumerate(zip(trained, initial)):
        if i != table:
            assert a.tobytes() == b.tobytes(), i
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
    frozen_tf, frozen_jax = [np.delete(x, SKS, 0) if i == 0 else x for i, x in enumerate(a)], \
        [np.delete(x, SKS, 0) if i == 0 else x for i, x in enumerate(b)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(frozen_tf, frozen_jax))


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
    one, two = exported_arrays(tf_run, "text_encoder.h5"), exported_arrays(tmp_path / "mirrored", "text_encoder.h5")
    assert np.abs(one[0][SKS] - two[0][SKS]).max() <= 1e-6
    assert np.delete(one[0], SKS, 0).tobytes() == np.delete(two[0], SKS, 0).tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one[1:], two[1:]))
