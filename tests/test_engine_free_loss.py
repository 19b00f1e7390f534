"""The DreamBooth loss is engine-free: keras.ops only, its randomness read from the batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dbdist.config import ScheduleConfig
from dbdist.data import batch_keys as keys
from dbdist.diffusion.schedule import NoiseSchedule

SCALING = 0.18215
# A stand-in UNet whose output is a fixed function of its noisy input, so the loss can be computed by hand.
UNET_GAIN = 0.5


def tiny_batch(batch=2, shape=(2, 2, 4), with_class=True, seed=0):
    """Cached-latent instance (and class) examples with their noise and timesteps, as numpy."""
    rng = np.random.default_rng(seed)
    streams = [("INSTANCE", 0)] + ([("CLASS", 1)] if with_class else [])
    out = {keys.EXAMPLE_POSITION: np.arange(batch, dtype=np.int32)}
    for name, _ in streams:
        out[getattr(keys, f"{name}_LATENT_MEAN")] = rng.normal(size=(batch,) + shape).astype(np.float32)
        out[getattr(keys, f"{name}_LATENT_LOGVAR")] = rng.normal(-2.0, 0.5, size=(batch,) + shape).astype(np.float32)
        out[getattr(keys, f"{name}_EMBEDDING")] = rng.normal(size=(batch, 3, 8)).astype(np.float32)
        out[getattr(keys, f"{name}_VAE_NOISE")] = rng.normal(size=(batch,) + shape).astype(np.float32)
        out[getattr(keys, f"{name}_NOISE")] = rng.normal(size=(batch,) + shape).astype(np.float32)
        out[getattr(keys, f"{name}_TIMESTEP")] = rng.integers(0, 1000, size=(batch,)).astype(np.int32)
    return out


def hand_loss(batch, global_batch, prior_loss_weight, prediction_type="epsilon", snr_gamma=None):
    """The loss in float64 numpy, written out from its definition (min-SNR as diffusers' train_dreambooth.py)."""
    alphas_cumprod = NoiseSchedule(ScheduleConfig(prediction_type=prediction_type)).alphas_cumprod.astype(np.float64)
    terms = {}
    for name in ("INSTANCE", "CLASS"):
        if getattr(keys, f"{name}_NOISE") not in batch:
            terms[name] = 0.0
            continue
        get = lambda field: batch[getattr(keys, f"{name}_{field}")].astype(np.float64)  # noqa: E731
        latents = (get("LATENT_MEAN") + np.exp(0.5 * get("LATENT_LOGVAR")) * get("VAE_NOISE")) * SCALING
        alpha_bar = alphas_cumprod[batch[getattr(keys, f"{name}_TIMESTEP")]][:, None, None, None]
        noise = get("NOISE")
        noisy = np.sqrt(alpha_bar) * latents + np.sqrt(1 - alpha_bar) * noise
        target = noise if prediction_type == "epsilon" else np.sqrt(alpha_bar) * noise - np.sqrt(1 - alpha_bar) * latents
        errors = np.mean((UNET_GAIN * noisy - target) ** 2, axis=(1, 2, 3))
        if snr_gamma is not None and name == "INSTANCE":
            snr = (alpha_bar / (1 - alpha_bar)).reshape(-1)
            errors = errors * np.minimum(snr, snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        terms[name] = errors.sum() / global_batch
    return terms["INSTANCE"] + prior_loss_weight * terms["CLASS"]


_UNDER_JAX = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_engine_free_loss import UNET_GAIN, hand_loss, tiny_batch
from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss
from dbdist.diffusion.schedule import NoiseSchedule
import keras
batch = tiny_batch()
settings = LossSettings(global_batch_size=2, prior_loss_weight=0.5, scaling_factor=0.18215, time_embedding_dim=8)
unet = lambda inputs, training: inputs[0] * UNET_GAIN
loss, terms = dreambooth_loss(unet, None, NoiseSchedule(), batch, settings)
print(json.dumps({{"backend": keras.backend.backend(), "loss": float(loss), "expected": float(hand_loss(batch, 2, 0.5)),
                  "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")[:3]}}))
"""


def test_the_loss_imports_no_tensorflow_and_runs_under_jax():
    # What the JAX engine needs to run the loss on a machine without TensorFlow. The
    # test module itself is imported in the child: it must not pull TensorFlow in either.
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _UNDER_JAX.format(tests=tests)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["backend"] == "jax"
    assert seen["tensorflow"] == [], f"importing the loss pulled in {seen['tensorflow']}"
    # float32 arithmetic against float64 on values of order 1: relative 1e-5.
    np.testing.assert_allclose(seen["loss"], seen["expected"], rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_gamma_weights_the_instance_loss_as_diffusers(prediction_type):
    from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss

    batch = tiny_batch()
    # t=10 has SNR ~ 300 (weight gamma/SNR, or gamma/(SNR+1)), t=700 SNR ~ 0.05 (weight 1, or SNR/(SNR+1)).
    batch[keys.INSTANCE_TIMESTEP] = np.array([10, 700], np.int32)
    schedule = NoiseSchedule(ScheduleConfig(prediction_type=prediction_type))
    unet = lambda inputs, training: inputs[0] * UNET_GAIN  # noqa: E731
    values = {}
    for gamma in (None, 5.0):
        settings = LossSettings(global_batch_size=2, prior_loss_weight=0.5, scaling_factor=SCALING,
                                time_embedding_dim=8, snr_gamma=gamma)
        loss, terms = dreambooth_loss(unet, None, schedule, batch, settings)
        values[gamma] = (float(loss), float(terms["prior_loss"]))
        # float32 arithmetic against float64 on values of order 1: relative 1e-5.
        np.testing.assert_allclose(values[gamma][0], hand_loss(batch, 2, 0.5, prediction_type, gamma), rtol=1e-5)
    assert values[5.0][1] == values[None][1]  # the prior loss is not weighted
    # The weighting moves the loss far beyond the tolerance, so a missing weight fails above.
    assert abs(values[5.0][0] - values[None][0]) > 1e-2 * values[None][0]
