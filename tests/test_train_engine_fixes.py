"""Engine defects of issue 9, each through `train` on the tiny preset (in-process, seconds each)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from commands import run_command

from dbdist.config import OptimConfig, model_config
from dbdist.data import features
from dbdist.diffusion import NoiseSchedule
from dbdist.models import build_models
from dbdist.training.loss import LossSettings, draw_randomness, dreambooth_loss
from dbdist.training.optimizer import build_optimizer
from dbdist.training.step import TrainState, micro_batch_gradients, replica_train_step

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
    settings = LossSettings(2 * accum, 1.0, 0.18215, 32, seed=5, latent_shape=(8, 8, 4))
    rng = np.random.default_rng(0)
    tokens = np.full((2, 77), 49407, dtype="int32")  # the end token pads, as the tokenizer pads
    tokens[:, :4] = [49406, 320, 1125, 539]
    batches = [
        {
            features.INSTANCE_PIXELS: tf.constant(np.tanh(rng.normal(size=(2, 64, 64, 3))), tf.float32),
            features.INSTANCE_TOKEN_IDS: tf.constant(tokens),
            features.INSTANCE_EMBEDDING: tf.zeros((2, 77, 32)),
            features.EXAMPLE_POSITION: tf.constant([2 * m, 2 * m + 1]),
        }
        for m in range(accum)
    ]
    expected = []
    for micro, batch in enumerate(batches):
        with tf.GradientTape() as tape:
            loss, _ = dreambooth_loss(
                state.unet, state.vae_encoder, state.schedule, batch, draw_randomness(batch, state.step * accum + micro, settings),
                settings, text_encoder=state.text_encoder,
            )
        dense = [tf.convert_to_tensor(g) for g in tape.gradient(loss, state.trainable_variables())]
        expected = dense if not expected else [a + b for a, b in zip(expected, dense)]
    compute = lambda batch, randomness: micro_batch_gradients(state, batch, randomness, settings)  # noqa: E731
    metrics = replica_train_step(state, batches, settings, max_grad_norm=1e9, compute=compute)
    # The same float32 sums in the same order, up to the norm's own reduction order: relative 1e-6.
    np.testing.assert_allclose(metrics["grad_norm"], tf.linalg.global_norm(expected), rtol=1e-6)
