"""The denoising UNet of Stable Diffusion, sized by a `UNetConfig`.

With the `sd-v1` / `sd-v2` configs this builds the same graph as keras-cv's
`DiffusionModel` / `DiffusionModelV2`, layer for layer in the same order, so
keras-cv's `.h5` files load into it (they are matched by layer order) and
its exports load into keras-cv.

Inputs (named as keras-cv's): `latent` (B, h, w, 4), `timestep_embedding`
(B, block_channels[0]) from `dbdist.diffusion.timestep_embedding`, and
`context` (B, 77, context_dim). Output: the predicted noise, like `latent`.
`gradient_checkpointing=True` rematerialises each ResBlock and SpatialTransformer in the
backward pass (keras.RematScope): activations are kept at block boundaries only.
"""

import keras

from dbdist.config import UNetConfig
from dbdist.models.unet_blocks import ResBlock, SpatialTransformer, Upsample


def _check(config: UNetConfig):
    levels = len(config.block_channels)
    if not (len(config.block_attention) == len(config.attention_heads) == levels):
        raise ValueError(
            f"block_channels, block_attention and attention_heads need one entry per level; got "
            f"{config.block_channels}, {config.block_attention}, {config.attention_heads}"
        )
    for channels, heads in zip(config.block_channels, config.attention_heads):
        if channels % heads:
            raise ValueError(f"UNet level with {channels} channels cannot split into {heads} attention heads")
        if channels % config.norm_groups:
            raise ValueError(f"UNet level with {channels} channels is not divisible into {config.norm_groups} norm groups")
    if config.geglu_activation not in ("gelu", "gelu_erf"):
        raise ValueError(f"geglu_activation must be gelu (tanh form) or gelu_erf, got {config.geglu_activation!r}")


def build_unet(config: UNetConfig, latent_size=None, context_length=77, name="unet", gradient_checkpointing=False):
    _check(config)
    channels, heads = config.block_channels, config.attention_heads
    time_dim = config.time_embedding_dim
    groups = config.norm_groups

    def res_block(ch, x, t):
        return ResBlock(ch, norm_groups=groups, gradient_checkpointing=gradient_checkpointing)([x, t])

    def transformer(level, x, ctx):
        head_size = channels[level] // heads[level]
        return SpatialTransformer(
            heads[level], head_size, linear_projection=config.linear_projection, norm_groups=groups,
            norm_epsilon=config.transformer_norm_epsilon, gelu_approximate=config.geglu_activation == "gelu",
            gradient_checkpointing=gradient_checkpointing,
        )([x, ctx])

    # Input creation order matters: it fixes the model's layer order.
    context = keras.Input((context_length, config.context_dim), name="context")
    t_input = keras.Input((time_dim,), name="timestep_embedding")
    latent = keras.Input((latent_size, latent_size, config.latent_channels), name="latent")

    t_emb = keras.layers.Dense(time_dim * 4)(t_input)
    t_emb = keras.layers.Activation("swish")(t_emb)
    t_emb = keras.layers.Dense(time_dim * 4)(t_emb)

    # Down: each level keeps its outputs for the skip connections.
    x = keras.layers.Conv2D(channels[0], 3, padding="same")(latent)
    skips = [x]
    last = len(channels) - 1
    for level, ch in enumerate(channels):
        for _ in range(config.layers_per_block):
            x = res_block(ch, x, t_emb)
            if config.block_attention[level]:
                x = transformer(level, x, context)
            skips.append(x)
        if level != last:
            # SD pads 1 on every side before the stride-2 conv ("same" would pad
            # only bottom/right and shift the grid).
            x = keras.layers.ZeroPadding2D(1)(x)
            x = keras.layers.Conv2D(ch, 3, strides=2)(x)
            skips.append(x)

    # Middle: always attends, whatever the last level does.
    x = res_block(channels[-1], x, t_emb)
    x = transformer(last, x, context)
    x = res_block(channels[-1], x, t_emb)

    # Up: one more block per level than on the way down, one per skip.
    for level in reversed(range(len(channels))):
        ch = channels[level]
        for _ in range(config.layers_per_block + 1):
            x = keras.layers.Concatenate()([x, skips.pop()])
            x = res_block(ch, x, t_emb)
            if config.block_attention[level]:
                x = transformer(level, x, context)
        if level != 0:
            x = Upsample(ch)(x)

    x = keras.layers.GroupNormalization(groups=groups, epsilon=1e-5)(x)
    x = keras.layers.Activation("swish")(x)
    output = keras.layers.Conv2D(config.latent_channels, 3, padding="same")(x)
    return keras.Model([latent, t_input, context], output, name=name)
