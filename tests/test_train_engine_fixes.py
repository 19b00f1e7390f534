"""Engine defects of issue 9 on the tiny preset: the step's maths on hand-made tensors, the rest
through `train` run in-process, with a spy on what it built, compiled and applied."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from commands import run_command
from PIL import Image

from dbdist.config import OptimConfig, model_config
from dbdist.data import example_noise, features
from dbdist.diffusion import NoiseSchedule
from dbdist.diffusion.ddim import ddim_update
from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss
from dbdist.models import build_models
from dbdist.training import engine as tf_engine
from dbdist.training.engine import TfEngine
from dbdist.training.lost_worker import describe
from dbdist.training.optimizer import EngineAdamW, build_optimizer
from dbdist.training.schedules import WarmupThenDecay
from dbdist.training.step import TrainState, micro_batch_gradients, replica_train_step
from dbdist.training.summaries import SCALARS
from dbdist.weights.keras_cv_h5 import read_layer_arrays

TRAIN_FLAGS = dict(model="tiny", strategy="one_device", global_batch_size=2, log_every=1, seed=0)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_text_encoder_gradients_accumulate_and_clip_by_their_dense_norm():
    # The token embedding's gradient is sparse (tf.IndexedSlices): `+` could not sum two
    # micro-batches' (a TypeError at step 1), and as padding repeats one token it repeats
    # rows, whose global norm is not the norm of the gradient (12.36 against 14.41 here).
    models = build_models(model_config("tiny"), ("unet", "vae_encoder", "text_encoder"), seed=0)
    state = TrainState(
        unet=models.unet, vae_encoder=models.vae_encoder, optimizer=build_optimizer(OptimConfig(learning_rate=0.0)),
        schedule=NoiseSchedule(), step=tf.Variable(0, dtype=tf.int64), text_encoder=models.text_encoder,
        text_optimizer=build_optimizer(OptimConfig(learning_rate=0.0)),
    )
    accum = 2
    settings = LossSettings(2 * accum, 1.0, 0.18215, 32)
    rng = np.random.default_rng(0)
    tokens = np.full((2, 77), 49407, dtype="int32")  # the end token pads, as the tokenizer pads
    tokens[:, :4] = [49406, 320, 1125, 539]
    batches = [
        example_noise.with_noise({
            features.INSTANCE_PIXELS: tf.constant(np.tanh(rng.normal(size=(2, 64, 64, 3))), tf.float32),
            features.INSTANCE_TOKEN_IDS: tf.constant(tokens),
            features.INSTANCE_EMBEDDING: tf.zeros((2, 77, 32)),
            features.EXAMPLE_POSITION: tf.constant([2 * m, 2 * m + 1]),
        }, example_noise.NoiseSpec(latent_shape=(8, 8, 4)), seed=5, step=m)
        for m in range(accum)
    ]
    expected = []
    for batch in batches:
        with tf.GradientTape() as tape:
            loss, _ = dreambooth_loss(
                state.unet, state.vae_encoder, state.schedule, batch, settings, text_encoder=state.text_encoder,
            )
        dense = [tf.convert_to_tensor(g) for g in tape.gradient(loss, state.trainable_variables())]
        expected = dense if not expected else [a + b for a, b in zip(expected, dense)]
    compute = lambda batch: micro_batch_gradients(state, batch, settings)  # noqa: E731
    metrics = replica_train_step(state, batches, max_grad_norm=1e9, compute=compute)
    # The same float32 sums in the same order, up to the norm's own reduction order: relative 1e-6.
    np.testing.assert_allclose(metrics["grad_norm"], tf.linalg.global_norm(expected), rtol=1e-6)


class _Spy:
    """Records what a run built and what its optimizers applied, for assertions after `train` returns."""

    def __init__(self, monkeypatch):
        self.states = []
        self.applied = {}  # id(optimizer) -> [learning rate of each update]
        self.loop_steps = []  # steps run by each call of the compiled loop
        build_state = TfEngine.build_state

        def kept_build_state(engine, *args, **kwargs):
            build_state(engine, *args, **kwargs)
            self._keep(engine.state)

        monkeypatch.setattr(TfEngine, "build_state", kept_build_state)
        make_train_loop = tf_engine.make_train_loop
        monkeypatch.setattr(tf_engine, "make_train_loop", lambda *a, **k: self._count(make_train_loop(*a, **k)))
        update_step = EngineAdamW._backend_update_step
        spy = self

        def recording_update_step(optimizer, grads, variables, learning_rate):
            def record(value):
                spy.applied.setdefault(id(optimizer), []).append(float(value))
                return 0.0

            recorded = tf.py_function(record, [learning_rate], tf.float32)
            with tf.control_dependencies([recorded]):
                return update_step(optimizer, grads, variables, learning_rate)

        monkeypatch.setattr(EngineAdamW, "_backend_update_step", recording_update_step)

    def _keep(self, state):
        self.states.append(state)
        return state

    def _count(self, loop):
        def counted(iterator, num_steps):
            self.loop_steps.append(int(num_steps))
            return loop(iterator, num_steps)

        return counted


def _checkpoint_steps(run_dir):
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))


def _polynomial(learning_rate, step, warmup=2, total=6, power=2.0):
    """diffusers' polynomial decay with warm-up, by hand."""
    if step < warmup:
        return learning_rate * step / warmup
    remaining = 1 - (min(step, total) - warmup) / (total - warmup)
    return (learning_rate - 1e-7) * remaining**power + 1e-7


@pytest.fixture(scope="module")
def scheduled_run(records_dir, tmp_path_factory):
    """6 steps, 2 per compiled loop, with a polynomial warm-up schedule on the UNet and the text
    encoder, a checkpoint every 2 steps and 2 kept."""
    run_dir = tmp_path_factory.mktemp("scheduled")
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = _Spy(monkeypatch)
        run_command(
            "train", data_dir=records_dir, output_dir=run_dir, max_train_steps=6, steps_per_loop=2, checkpoint_every=2,
            keep_checkpoints=2, lr_schedule="polynomial", lr_power=2.0, lr_warmup_steps=2, learning_rate=1e-3,
            train_text_encoder=True, text_encoder_learning_rate=2e-3, **TRAIN_FLAGS,
        )
    return run_dir, spy


def test_logged_learning_rate_is_the_one_each_update_used(scheduled_run):
    run_dir, spy = scheduled_run
    records = _metrics(run_dir)
    (state,) = spy.states
    # float32 schedule arithmetic against Python's float64: relative 1e-6.
    for name, optimizer, base in (
        ("learning_rate", state.optimizer, 1e-3), ("text_encoder_learning_rate", state.text_optimizer, 2e-3),
    ):
        logged = [r[name] for r in records]
        np.testing.assert_allclose(logged, spy.applied[id(optimizer)], rtol=1e-6)
        np.testing.assert_allclose(logged, [_polynomial(base, s) for s in range(6)], rtol=1e-6)


def test_steps_per_loop_and_keep_checkpoints(scheduled_run):
    run_dir, spy = scheduled_run
    assert spy.loop_steps == [2, 2, 2]
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert _checkpoint_steps(run_dir) == [4, 6]
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-6")


def test_tensorboard_has_every_scalar_at_every_logged_step(scheduled_run):
    run_dir, _ = scheduled_run
    scalars = {}
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    records = _metrics(run_dir)
    for tag in SCALARS:
        assert sorted(scalars[tag]) == [1, 2, 3, 4, 5, 6], tag
        # The same float32 values: those TensorBoard holds went through float32.
        np.testing.assert_allclose([scalars[tag][r["step"]] for r in records], [r[tag] for r in records], rtol=1e-6)


def test_float32_run_computes_in_float32_without_a_loss_scale(scheduled_run):
    run_dir, spy = scheduled_run
    (state,) = spy.states
    assert state.unet.compute_dtype == "float32" and state.loss_scale is None
    assert not any("loss_scale" in name for name, _ in tf.train.list_variables(str(run_dir / "checkpoints")))


def test_validation_every_must_be_a_multiple_of_steps_per_loop(records_dir, vocab_path, tmp_path):
    # Unchecked, loops of 2 steps never end at a multiple of 3: no validation image, no word said.
    with pytest.raises(ValueError, match=r"validation_every \(3\) must be a multiple of steps_per_loop \(2\)"):
        run_command(
            "train", data_dir=records_dir, output_dir=tmp_path, max_train_steps=4, steps_per_loop=2, checkpoint_every=2,
            validation_every=3, validation_prompt="a photo of sks ball", vocab_path=vocab_path, **TRAIN_FLAGS,
        )


@pytest.fixture(scope="module")
def bf16_resumed_run(records_dir, vocab_path, tmp_path_factory):
    """bf16: 3 steps one per loop, then resumed to 6 with 2 per loop and validation images every 2."""
    run_dir = tmp_path_factory.mktemp("bf16")
    flags = dict(data_dir=records_dir, output_dir=run_dir, mixed_precision="bf16", checkpoint_every=2,
                 keep_checkpoints=10, learning_rate=1e-4, vocab_path=vocab_path, **TRAIN_FLAGS)
    run_command("train", max_train_steps=3, steps_per_loop=1, **flags)
    assert _checkpoint_steps(run_dir) == [2, 3]
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = _Spy(monkeypatch)
        run_command("train", max_train_steps=6, steps_per_loop=2, validation_every=2,
                    validation_prompt="a photo of sks ball", **flags)
    return run_dir, spy


@pytest.mark.slow  # only in make test-all: a bf16 run resumed mid-loop (over a minute on 2 cores)
def test_resume_between_loop_boundaries_still_checkpoints_and_validates(bf16_resumed_run):
    # Resumed at step 3 with 2 steps per loop: loops 3-5, 5-6 would step over 4.
    run_dir, spy = bf16_resumed_run
    assert spy.loop_steps == [1, 2]
    assert _checkpoint_steps(run_dir) == [2, 3, 4, 6]
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == ["step-000004.png", "step-000006.png"]
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # only in make test-all: a bf16 run resumed mid-loop (over a minute on 2 cores)
def test_bf16_validation_images_and_generate(bf16_resumed_run, vocab_path, tmp_path):
    run_dir, _ = bf16_resumed_run
    grid = np.asarray(Image.open(run_dir / "validation" / "step-000006.png"))
    assert grid.shape == (64, 128, 3) and grid.std() > 0  # two 64 px images, not a blank
    run_command("generate", run_dir=run_dir, prompt="a photo of sks ball", num_images=1, num_steps=2,
                output_dir=tmp_path, vocab_path=vocab_path)
    assert (tmp_path / "grid.png").exists()


@pytest.mark.slow  # only in make test-all: a bf16 run resumed mid-loop (over a minute on 2 cores)
def test_bf16_computes_in_bfloat16_on_float32_variables(bf16_resumed_run):
    run_dir, spy = bf16_resumed_run
    (state,) = spy.states
    assert state.unet.compute_dtype == "bfloat16"
    assert {v.dtype for v in state.unet.weights} == {"float32"}
    assert state.loss_scale is None
    assert all(np.isfinite(r["loss"]) for r in _metrics(run_dir))
    # Exported as keras-cv's float32, whatever the compute dtype.
    exported = [a for _, arrays in read_layer_arrays(run_dir / "export" / "unet.h5") for a in arrays]
    assert exported and {a.dtype.name for a in exported} == {"float32"}


def test_fp16_has_a_checkpointed_loss_scale(records_dir, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    run_command("train", data_dir=records_dir, output_dir=tmp_path, max_train_steps=1, mixed_precision="fp16",
                learning_rate=1e-4, checkpoint_every=1, **TRAIN_FLAGS)
    (state,) = spy.states
    assert state.unet.compute_dtype == "float16" and {v.dtype for v in state.unet.weights} == {"float32"}
    assert np.isfinite(_metrics(tmp_path)[0]["loss"])
    saved = dict(tf.train.list_variables(str(tmp_path / "checkpoints")))
    scale = [name for name in saved if name.startswith("loss_scale/scale")]
    assert scale and float(tf.train.load_variable(str(tmp_path / "checkpoints"), scale[0])) == float(state.loss_scale.scale)


def test_ddim_step_under_a_bfloat16_policy_stays_float32():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        unet = build_models(model_config("tiny"), ("unet",), seed=0).unet
        latents = tf.constant(np.random.default_rng(0).standard_normal((1, 8, 8, 4)), tf.float32)
        contexts = tf.zeros((2, 77, 32))
        predict = lambda x, t_emb, context: unet([x, t_emb, context], training=False)  # noqa: E731
        assert unet.compute_dtype == "bfloat16"
        updated = ddim_update(predict, latents, contexts, 999, 0.0047, 0.01, 7.5, time_embedding_dim=32, v_prediction=False)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert updated.dtype == "float32" and np.isfinite(np.asarray(updated)).all()


def test_non_finite_loss_stops_the_run_naming_the_step(records_dir, tmp_path):
    # lr 1e30 sends the weights to ~1e30 at the first update: the second step's loss overflows.
    with pytest.raises(FloatingPointError, match=r"non-finite loss \S+ at step 2;"):
        run_command("train", data_dir=records_dir, output_dir=tmp_path, max_train_steps=2, steps_per_loop=2,
                    checkpoint_every=2, learning_rate=1e30, **TRAIN_FLAGS)
    assert not (tmp_path / "export").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_polynomial_schedule_is_diffusers_with_its_power_and_end_rate():
    # By hand: warm-up 0, lr/2, lr; then (lr - 1e-7) * remaining**power + 1e-7, remaining 3/4, 1/2, 1/4, 0.
    squared = WarmupThenDecay(1e-3, "polynomial", warmup_steps=2, total_steps=6, power=2.0)
    hand = [0.0, 5e-4, 1e-3, 5.6254375e-4, 2.50075e-4, 6.259375e-5, 1e-7, 1e-7]
    # float32 arithmetic: relative 1e-6.
    np.testing.assert_allclose([float(squared(s)) for s in range(8)], hand, rtol=1e-6)
    linear = WarmupThenDecay(1e-3, "polynomial", warmup_steps=0, total_steps=4)  # power 1 by default, as diffusers
    np.testing.assert_allclose([float(linear(s)) for s in range(5)], [1e-3, 7.50025e-4, 5.0005e-4, 2.50075e-4, 1e-7], rtol=1e-6)
    assert OptimConfig().lr_power == 1.0
    with pytest.raises(ValueError, match="decays to 1e-07: the learning rate must be above it, got 1e-07"):
        WarmupThenDecay(1e-7, "polynomial", total_steps=4)
    with pytest.raises(ValueError, match="lr_power must be > 0, got 0"):
        WarmupThenDecay(1e-3, "polynomial", total_steps=4, power=0.0)


@pytest.mark.parametrize(
    "message, lost",
    [
        # As measured: a kill -9 of worker 1 during the loop, and a peer that stopped sending heartbeats.
        ("Graph execution error:\n\nCollective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC "
         "error information from remote target /job:worker/replica:0/task:1 while calling /tensorflow.WorkerService"
         "/RecvBuf:\n\t [[{{node while/CollectiveReduceV2}}]]", "task worker:1"),
        ("{{function_node __wrapped__CollectiveBcastSend}} Collective ops is aborted by: Error reported from "
         "/job:worker/task:0: The following tasks are unhealthy (stopped sending heartbeats):\n/job:chief/replica:0/task:0",
         "task chief:0"),
        ("Collective ops is aborted by: cluster check alive failed", "a peer worker"),
    ],
)
def test_a_lost_worker_is_named_with_the_last_checkpoint(message, lost):
    text = describe(tf.errors.UnavailableError(None, None, message), 6)
    assert text.startswith(f"lost {lost} of the multi_worker cluster (UnavailableError: ")
    assert text.endswith("the last checkpoint is at step 6. Rerun the same command on every worker to resume.")
    assert "there is no checkpoint yet" in describe(tf.errors.UnavailableError(None, None, message), None)
