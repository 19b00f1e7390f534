"""The toy VAE's training: reconstruction (L1) plus a small KL term, a plain TensorFlow loop.

As Stable Diffusion's VAE, it is trained apart from, and before, the UNet: the UNet then
learns to draw in its latent space. The KL weight is small (1e-4 of the per-pixel L1, as
SD's 1e-6 of a summed loss) so latents stay near-deterministic codes, yet bounded.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from dbdist.models import build_models
from dbdist.progress import Progress


def _crops(pixels, rng, batch_size, crop):
    """`batch_size` random crop x crop squares: the networks are convolutional (their attention is over
    any size), and a 32 px crop costs a quarter of a 64 px photo while holding the same edges and stripes."""
    rows = rng.integers(0, len(pixels), batch_size)
    top, left = rng.integers(0, pixels.shape[1] - crop + 1, (2, batch_size))
    return np.stack([pixels[r, t:t + crop, l:l + crop] for r, t, l in zip(rows, top, left)])


def train_vae(model_config, photos, *, steps, batch_size=16, crop=32, learning_rate=1e-3, kl_weight=1e-4, seed=0):
    """(vae_encoder, vae_decoder, final L1) trained on crops of uint8 `photos` (N, H, W, 3)."""
    networks = build_models(model_config, ("vae_encoder", "vae_decoder"), seed=seed)
    encoder, decoder = networks.vae_encoder, networks.vae_decoder
    scale = model_config.vae.scaling_factor
    variables = encoder.trainable_variables + decoder.trainable_variables
    # Cosine decay to 0: the last steps at a small rate sharpen the stripes' edges.
    optimizer = tf.keras.optimizers.Adam(tf.keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    pixels = photos.astype(np.float32) / 127.5 - 1.0

    @tf.function
    def step(batch, noise_seed):
        with tf.GradientTape() as tape:
            mean, log_variance = encoder(batch, training=True)
            log_variance = tf.clip_by_value(log_variance, -30.0, 20.0)
            noise = tf.random.stateless_normal(tf.shape(mean), seed=noise_seed)
            latents = mean + tf.exp(0.5 * log_variance) * noise
            reconstruction = decoder(latents * scale, training=True)
            l1 = tf.reduce_mean(tf.abs(reconstruction - batch))
            kl = 0.5 * tf.reduce_mean(tf.square(mean) + tf.exp(log_variance) - 1.0 - log_variance)
            loss = l1 + kl_weight * kl
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return l1, kl

    order = np.random.default_rng(seed)
    progress = Progress(steps, "VAE steps", every_s=30)
    for i in range(steps):
        batch = _crops(pixels, order, batch_size, crop)
        l1, kl = step(tf.constant(batch), tf.constant([seed, i], tf.int32))
        progress(1)
        if i % 200 == 0 or i == steps - 1:
            logging.info("VAE step %d/%d: L1 %.4f, KL %.3f", i + 1, steps, float(l1), float(kl))
    return encoder, decoder, float(l1)


def latent_std(encoder, photos, batch_size=64):
    """Standard deviation of the encoder's latent means over `photos`: 1 / the scaling factor SD would pick."""
    means = [encoder(photos[i:i + batch_size].astype(np.float32) / 127.5 - 1.0, training=False)[0]
             for i in range(0, len(photos), batch_size)]
    return float(np.std(np.concatenate([np.asarray(m) for m in means])))


def normalise_latents(encoder, decoder, *, target_std, current_std):
    """Rescales the latent space by c = target/current, exactly: the encoder's last 1x1 conv
    (SD's quant_conv) multiplies the means by c and adds 2 log c to the log-variances; the
    decoder's first (post_quant_conv) divides its input by c. Reconstructions are unchanged."""
    c = target_std / current_std
    quant_conv = [layer for layer in encoder.layers if layer.weights][-1]
    kernel, bias = (np.asarray(w) for w in quant_conv.weights)
    channels = kernel.shape[-1] // 2
    kernel[..., :channels] *= c
    bias[:channels] *= c
    bias[channels:] += 2.0 * np.log(c)
    quant_conv.set_weights([kernel, bias])
    post_quant_conv = [layer for layer in decoder.layers if layer.weights][0]
    kernel, bias = (np.asarray(w) for w in post_quant_conv.weights)
    post_quant_conv.set_weights([kernel / c, bias])
