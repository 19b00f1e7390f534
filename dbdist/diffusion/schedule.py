"""Stable Diffusion's DDPM noise schedule and timestep embedding.

SD was trained with the "scaled_linear" schedule: betas evenly spaced in
sqrt-space from sqrt(0.00085) to sqrt(0.012), squared, over 1000 steps
(keras-cv's `NoiseScheduler` defaults to plain linear 1e-4..0.02, which is
not SD's; its hard-coded sampling table `_ALPHAS_CUMPROD` is, and
tests/test_diffusion.py checks ours against it).
"""

import math

import numpy as np
from keras import ops

from dbdist.config import ScheduleConfig


def _betas(config: ScheduleConfig):
    steps = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        return np.linspace(config.beta_start**0.5, config.beta_end**0.5, steps, dtype=np.float64) ** 2
    if config.beta_schedule == "linear":
        return np.linspace(config.beta_start, config.beta_end, steps, dtype=np.float64)
    raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', got {config.beta_schedule!r}")


class NoiseSchedule:
    """alphas_cumprod and the forward process q(x_t | x_0)."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {config.prediction_type!r}")
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        # Computed in float64, then stored as float32: the table SD's samplers use.
        self.alphas_cumprod = np.cumprod(1.0 - _betas(config)).astype(np.float32)

    def _coefficients(self, timesteps, like):
        alpha_bar = ops.take(ops.convert_to_tensor(self.alphas_cumprod), ops.cast(timesteps, "int32"))
        alpha_bar = ops.cast(ops.reshape(alpha_bar, (-1,) + (1,) * (len(like.shape) - 1)), like.dtype)
        return ops.sqrt(alpha_bar), ops.sqrt(1.0 - alpha_bar)

    def add_noise(self, x0, noise, timesteps):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, per example."""
        signal, sigma = self._coefficients(timesteps, x0)
        return signal * x0 + sigma * noise

    def snr(self, timesteps):
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of each timestep, float32 (B,)."""
        alpha_bar = ops.take(ops.convert_to_tensor(self.alphas_cumprod), ops.cast(timesteps, "int32"))
        return alpha_bar / (1.0 - alpha_bar)

    def training_target(self, x0, noise, timesteps):
        """What the UNet should output: the noise, or v = sqrt(ab) noise - sqrt(1-ab) x_0."""
        if self.config.prediction_type == "epsilon":
            return noise
        signal, sigma = self._coefficients(timesteps, x0)
        return signal * noise - sigma * x0


def timestep_embedding(timesteps, dim=320, max_period=10000):
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim), as keras-cv builds it.

    keras-cv puts the cosines first ([cos, sin]), like SD's `flip_sin_to_cos`.
    """
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.arange(half, dtype="float32") / half)
    args = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * freqs[None, :]
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
