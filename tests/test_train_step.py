"""The per-replica maths of dbdist/training on hand-made tensors and the tiny networks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dbdist.config import OptimConfig, model_config
from dbdist.data import features
from dbdist.diffusion import NoiseSchedule
from dbdist.models import build_models
from dbdist.data import example_noise
from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss
from dbdist.training.loss_scale import DynamicLossScale
from dbdist.training.optimizer import build_optimizer
from dbdist.training.step import TrainState, micro_batch_gradients, replica_train_step

GLOBAL_BATCH = 4


@pytest.fixture(scope="module")
def tiny():
    return build_models(model_config("tiny"), ("unet", "vae_encoder"), seed=0)


NOISE = example_noise.NoiseSpec(latent_shape=(8, 8, 4))
SEED = 5


def _batch(rows=slice(None), step=3):
    """The global batch with the noise the input pipeline would draw at `step`, or its `rows`."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.normal(size=(GLOBAL_BATCH,) + shape).astype("float32")

    full = {
        features.INSTANCE_PIXELS: np.tanh(arr(64, 64, 3)),
        features.CLASS_PIXELS: np.tanh(arr(64, 64, 3)),
        features.INSTANCE_EMBEDDING: arr(77, 32),
        features.CLASS_EMBEDDING: arr(77, 32),
        features.EXAMPLE_POSITION: np.arange(GLOBAL_BATCH, dtype="int32"),
    }
    full = example_noise.with_noise(full, NOISE, seed=SEED, step=step)
    return {k: tf.constant(v[rows]) for k, v in full.items()}


def _settings(prior_loss_weight=1.0):
    return LossSettings(GLOBAL_BATCH, prior_loss_weight, 0.18215, 32)


def _loss_and_grads(tiny, batch, settings):
    with tf.GradientTape() as tape:
        loss, terms = dreambooth_loss(tiny.unet, tiny.vae_encoder, NoiseSchedule(), batch, settings)
    return loss, terms, tape.gradient(loss, tiny.unet.trainable_variables)


def test_replica_shares_sum_to_the_global_batch(tiny):
    """Two 'replicas' holding halves of the global batch give, summed, the one-device loss and gradient."""
    settings = _settings()
    loss, terms, grads = _loss_and_grads(tiny, _batch(), settings)
    loss_a, terms_a, grads_a = _loss_and_grads(tiny, _batch(slice(0, 2)), settings)
    loss_b, terms_b, grads_b = _loss_and_grads(tiny, _batch(slice(2, 4)), settings)
    # fp32 sums in another order: relative 1e-5.
    np.testing.assert_allclose(loss_a + loss_b, loss, rtol=1e-5)
    for key in ("instance_loss", "prior_loss"):
        np.testing.assert_allclose(terms_a[key] + terms_b[key], terms[key], rtol=1e-5)
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in grads)
    for g, ga, gb in zip(grads, grads_a, grads_b):
        np.testing.assert_allclose(ga + gb, g, atol=1e-5 * scale)
    assert float(loss) > 0


def test_loss_is_instance_plus_weighted_prior(tiny):
    loss, terms, _ = _loss_and_grads(tiny, _batch(), _settings(prior_loss_weight=0.25))
    np.testing.assert_allclose(loss, terms["instance_loss"] + 0.25 * terms["prior_loss"], rtol=1e-6)
    assert float(terms["instance_loss"]) != float(terms["prior_loss"])


def test_noise_is_keyed_by_example_position_not_by_batch():
    shape = (8, 8, 4)
    rows = [example_noise.diffusion_noise(1, 7, p, 0, shape) for p in range(4)]
    assert not np.array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[2], example_noise.diffusion_noise(1, 8, 2, 0, shape))
    assert not np.array_equal(rows[2], example_noise.diffusion_noise(1, 7, 2, 1, shape))
    assert not np.array_equal(rows[2], example_noise.vae_noise(1, 7, 2, 0, shape))
    t = np.array([example_noise.timestep(1, 7, p, 0, 1000).numpy() for p in range(64)])
    assert t.min() >= 0 and t.max() < 1000 and len(set(t)) > 40
    # A hand-made batch gets the same draws per position, whichever rows it holds.
    batch = {features.INSTANCE_EMBEDDING: tf.zeros((2, 77, 32)), features.EXAMPLE_POSITION: tf.constant([3, 1])}
    drawn = example_noise.with_noise(batch, example_noise.NoiseSpec(shape), seed=1, step=7)
    np.testing.assert_array_equal(drawn[features.INSTANCE_NOISE][1], rows[1])


def _state(tiny, learning_rate, loss_scale=None):
    optimizer = build_optimizer(OptimConfig(learning_rate=learning_rate))
    optimizer.build(tiny.unet.trainable_variables)
    return TrainState(
        unet=tiny.unet, vae_encoder=tiny.vae_encoder, optimizer=optimizer, schedule=NoiseSchedule(),
        step=tf.Variable(0, dtype=tf.int64), loss_scale=loss_scale,
    )


def _step(state, batches, settings, max_grad_norm):
    return replica_train_step(
        state, list(batches), max_grad_norm, lambda b: micro_batch_gradients(state, b, settings=settings),
    )


def _spy_on_applied_gradients(state, monkeypatch):
    """Records the gradients the step hands to the optimizer (after the sum and clipping), then applies them."""
    applied = []
    apply = state.optimizer.apply

    def spy(gradients, variables):
        applied.append([keras.ops.convert_to_numpy(g).copy() for g in gradients])
        return apply(gradients, variables)

    monkeypatch.setattr(state.optimizer, "apply", spy)
    return applied


def _global_norm(arrays):
    return float(np.sqrt(sum(np.sum(np.square(a.astype("float64"))) for a in arrays)))


def _weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e9])
def test_step_reports_the_unclipped_norm_and_applies_the_clipped_gradient(tiny, monkeypatch, max_grad_norm):
    _, _, grads = _loss_and_grads(tiny, _batch(), _settings())
    grads = [g.numpy() for g in grads]
    expected_norm = _global_norm(grads)
    assert expected_norm > 1e-2  # so that the clip at 1e-3 binds (and 1e9 does not)
    state = _state(tiny, 0.0)  # lr 0: the shared tiny UNet stays as it is for the other tests
    applied = _spy_on_applied_gradients(state, monkeypatch)
    metrics = _step(state, [_batch()], _settings(), max_grad_norm=max_grad_norm)
    # The same gradient computed twice in float32 (sums in another order): relative 1e-5.
    np.testing.assert_allclose(float(metrics["grad_norm"]), expected_norm, rtol=1e-5)
    (gradients,) = applied
    np.testing.assert_allclose(_global_norm(gradients), min(expected_norm, max_grad_norm), rtol=1e-5)
    # Clipping rescales, it does not change the direction.
    ratio = min(1.0, max_grad_norm / expected_norm)
    scale = max(float(np.abs(g).max()) for g in grads)
    for g, a in zip(grads, gradients):
        np.testing.assert_allclose(a, g * ratio, atol=1e-5 * scale * ratio)


def test_accumulated_micro_batches_apply_the_gradient_of_one_larger_batch(tiny, monkeypatch):
    """K=2 micro-batches of 2 examples hand the optimizer the gradient of one 4-example batch.

    Each micro-batch comes with its noise drawn at its own pipeline step (step*K + micro);
    the 4-example batch is given exactly those draws (every batch key is per example,
    so the two micro-batches concatenate), so both sides see the same numbers.
    """
    settings = _settings()  # global batch 4 = 2 examples x 2 micro-batches
    step = 3
    micro_batches = [_batch(slice(0, 2), step=step * 2), _batch(slice(2, 4), step=step * 2 + 1)]
    state = _state(tiny, 0.0)
    applied = _spy_on_applied_gradients(state, monkeypatch)
    metrics = _step(state, micro_batches, settings, max_grad_norm=1e9)  # clipping off

    one_batch = {key: tf.concat([b[key] for b in micro_batches], axis=0) for key in micro_batches[0]}
    expected, expected_metrics = micro_batch_gradients(state, one_batch, settings=settings)
    expected = [g.numpy() for g in expected]
    (gradients,) = applied
    # The same sums in float32 in another order: 1e-5 of the largest gradient entry. Averaging
    # the micro-batches instead of summing them would be off by a factor of 2.
    scale = max(float(np.abs(g).max()) for g in expected)
    for g, a in zip(expected, gradients):
        np.testing.assert_allclose(a, g, atol=1e-5 * scale)
    np.testing.assert_allclose(float(metrics["grad_norm"]), _global_norm(expected), rtol=1e-5)
    for key in ("loss", "instance_loss", "prior_loss"):
        np.testing.assert_allclose(float(metrics[key]), float(expected_metrics[key]), rtol=1e-5)


def test_fp16_overflow_skips_the_step_and_halves_the_scale(tiny):
    before = _weights(tiny.unet)
    scale = DynamicLossScale(initial_scale=1024.0)
    state = _state(tiny, 1e-2, loss_scale=scale)
    overflowing = _batch()
    # An inf in one example stands for an fp16 overflow: its gradients are not finite.
    pixels = overflowing[features.INSTANCE_PIXELS].numpy()
    pixels[0, 0, 0, 0] = np.inf
    overflowing[features.INSTANCE_PIXELS] = tf.constant(pixels)
    metrics = _step(state, [overflowing], _settings(), max_grad_norm=1.0)
    assert float(metrics["skipped"]) == 1.0
    assert float(scale.scale) == 512.0
    assert int(state.optimizer.iterations) == 0
    for a, b in zip(before, _weights(tiny.unet)):
        assert a.tobytes() == b.tobytes()
    metrics = _step(state, [_batch()], _settings(), max_grad_norm=1.0)
    assert float(metrics["skipped"]) == 0.0 and int(state.optimizer.iterations) == 1
    assert any(a.tobytes() != b.tobytes() for a, b in zip(before, _weights(tiny.unet)))


def test_loss_scale_grows_after_good_steps():
    scale = DynamicLossScale(initial_scale=8.0, growth_interval=2)
    scale.update(tf.constant(True))
    assert float(scale.scale) == 8.0
    scale.update(tf.constant(True))
    assert float(scale.scale) == 16.0 and int(scale.good_steps) == 0
    scale.update(tf.constant(False))
    assert float(scale.scale) == 8.0
    grads, finite = scale.unscale([tf.constant([8.0, 16.0])])
    np.testing.assert_array_equal(grads[0], [1.0, 2.0])
    assert bool(finite)
    _, finite = scale.unscale([tf.constant([np.inf])])
    assert not bool(finite)
