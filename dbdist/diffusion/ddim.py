"""Deterministic DDIM sampling (eta = 0) with classifier-free guidance.

The timesteps are spread over [0, 999] as keras-cv's `StableDiffusion` spreads
them, so our sampler reproduces keras-cv's images for the same weights and
starting noise (tests/test_diffusion.py).
"""

import numpy as np
from keras import ops

from dbdist.diffusion.schedule import NoiseSchedule, timestep_embedding


def sampling_timesteps(num_steps, num_train_timesteps=1000):
    """Descending timesteps: round(linspace(0, T-1, num_steps)), as keras-cv."""
    if not 1 <= num_steps <= num_train_timesteps:  # more steps than timesteps would repeat some
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_train_timesteps - 1])
    ratio = (num_train_timesteps - 1) / (num_steps - 1)
    return (np.arange(num_steps) * ratio).round().astype(np.int64)[::-1]


def initial_noise(seed, num_images, latent_size, latent_channels=4, first_index=0):
    """Starting latents; image i depends only on (seed, i), not on the batch it is drawn in."""
    shape = (latent_size, latent_size, latent_channels)
    return np.stack(
        [np.random.default_rng([seed, first_index + i]).standard_normal(shape) for i in range(num_images)]
    ).astype("float32")


def ddim_sample(
    predict,
    noise,
    context,
    unconditional_context,
    schedule: NoiseSchedule,
    num_steps=50,
    guidance_scale=7.5,
    time_embedding_dim=320,
    on_step=None,
):
    """Denoises `noise` (B, h, w, 4) into latents guided by `context` (B, L, D).

    `predict(latents, t_emb, context)` is the UNet (possibly compiled). The
    conditional and unconditional passes run as one batch of 2B.
    `on_step(i, n)` is called after each step (progress display).
    """
    latents = ops.convert_to_tensor(noise)
    both_contexts = ops.concatenate([unconditional_context, context], axis=0)
    alphas = schedule.alphas_cumprod
    timesteps = sampling_timesteps(num_steps, schedule.num_train_timesteps)
    for i, t in enumerate(timesteps):
        a_prev = float(alphas[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        latents = ddim_update(
            predict, latents, both_contexts, int(t), float(alphas[t]), a_prev, guidance_scale,
            time_embedding_dim=time_embedding_dim, v_prediction=schedule.config.prediction_type == "v_prediction",
        )
        if on_step:
            on_step(i + 1, len(timesteps))
    return latents


def ddim_update(predict, latents, both_contexts, t, a_t, a_prev, guidance_scale, *, time_embedding_dim, v_prediction):
    """One guided DDIM step from timestep t (cumulative alpha a_t) to the previous one (a_prev).

    `both_contexts` is [unconditional; conditional] (2B, L, D). t, a_t, a_prev may be
    Python numbers or scalar tensors (a compiled step then serves every timestep).
    """
    batch = ops.shape(latents)[0]
    t_emb = timestep_embedding(ops.full((2 * batch,), t, dtype="int32"), time_embedding_dim)
    # Under mixed precision the UNet answers in bf16/fp16; guidance and the update stay in float32.
    output = ops.cast(predict(ops.concatenate([latents, latents], axis=0), t_emb, both_contexts), "float32")
    uncond, cond = output[:batch], output[batch:]
    output = uncond + guidance_scale * (cond - uncond)
    if v_prediction:
        pred_x0 = a_t**0.5 * latents - (1 - a_t) ** 0.5 * output
        eps = a_t**0.5 * output + (1 - a_t) ** 0.5 * latents
    else:
        eps = output
        pred_x0 = (latents - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * eps


def pixels_to_uint8(pixels):
    """Decoder output in [-1, 1] -> uint8 images, as keras-cv converts them."""
    pixels = np.asarray(ops.convert_to_numpy(pixels), dtype=np.float32)
    return np.clip((pixels + 1.0) / 2.0 * 255.0, 0, 255).astype(np.uint8)
