"""Stable Diffusion's KL autoencoder: image -> latent distribution -> image.

The encoder returns the latent distribution (mean, log-variance), unscaled;
sampling and the 0.18215 scaling are the caller's (`dbdist.diffusion.latents`).
keras-cv's `ImageEncoder` instead returns `mean * 0.18215`; its weight layout
is the same as ours (its last layer, a Lambda, has no weights), so its `.h5`
loads here.

The decoder takes scaled latents, as keras-cv's `Decoder` does, and returns
images in about [-1, 1].
"""

import keras
from keras import ops

from dbdist.config import VAEConfig
from dbdist.models.vae_blocks import VAEAttention, VAEResBlock


def _check(config: VAEConfig):
    for ch in config.block_channels:
        if ch % config.norm_groups:
            raise ValueError(f"VAE level with {ch} channels is not divisible into {config.norm_groups} norm groups")


def _middle(x, channels, groups, epsilon):
    x = VAEResBlock(channels, groups, epsilon)(x)
    x = VAEAttention(channels, groups, epsilon)(x)
    return VAEResBlock(channels, groups, epsilon)(x)


def build_vae_encoder(config: VAEConfig, name="vae_encoder"):
    """pixels (B, H, W, 3) in [-1, 1] -> (mean, log_variance), each (B, H/f, W/f, 4)."""
    _check(config)
    groups, channels, epsilon = config.norm_groups, config.block_channels, config.norm_epsilon
    pixels = keras.Input((None, None, 3), name="pixels")
    x = keras.layers.Conv2D(channels[0], 3, padding="same")(pixels)
    last = len(channels) - 1
    for level, ch in enumerate(channels):
        for _ in range(config.layers_per_block):
            x = VAEResBlock(ch, groups, epsilon)(x)
        if level != last:
            # SD pads only bottom/right before its stride-2 convs.
            x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
            x = keras.layers.Conv2D(ch, 3, strides=2)(x)
    x = _middle(x, channels[-1], groups, epsilon)
    x = keras.layers.GroupNormalization(groups=groups, epsilon=epsilon)(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.Conv2D(2 * config.latent_channels, 3, padding="same")(x)
    moments = keras.layers.Conv2D(2 * config.latent_channels, 1)(x)  # SD's quant_conv
    mean, log_variance = ops.split(moments, 2, axis=-1)
    return keras.Model(pixels, [mean, log_variance], name=name)


def build_vae_decoder(config: VAEConfig, name="vae_decoder"):
    """scaled latents (B, h, w, 4) -> pixels (B, h*f, w*f, 3) in about [-1, 1]."""
    _check(config)
    groups, channels, epsilon = config.norm_groups, config.block_channels, config.norm_epsilon
    latents = keras.Input((None, None, config.latent_channels), name="latent")
    x = keras.layers.Rescaling(1.0 / config.scaling_factor)(latents)
    x = keras.layers.Conv2D(config.latent_channels, 1)(x)  # SD's post_quant_conv
    x = keras.layers.Conv2D(channels[-1], 3, padding="same")(x)
    x = _middle(x, channels[-1], groups, epsilon)
    for level in reversed(range(len(channels))):
        ch = channels[level]
        for _ in range(config.layers_per_block + 1):
            x = VAEResBlock(ch, groups, epsilon)(x)
        if level != 0:
            x = keras.layers.UpSampling2D(2)(x)
            x = keras.layers.Conv2D(ch, 3, padding="same")(x)
    x = keras.layers.GroupNormalization(groups=groups, epsilon=epsilon)(x)
    x = keras.layers.Activation("swish")(x)
    pixels = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(latents, pixels, name=name)
