"""Which projections get LoRA adapters, named as diffusers names them, from the config alone.

The targets are those of diffusers' `train_dreambooth_lora.py`: in the UNet every attention's
`to_q`, `to_k`, `to_v` and `to_out.0` (our `out_proj`), in the text encoder every layer's
`q_proj`, `k_proj`, `v_proj` and `out_proj`. Each target has diffusers' module name (what a LoRA
file's keys start with), the network it lives in, and its (in, out) widths. Computing them from
the config, not from a built network, lets a LoRA file be checked before any network is built.

The list is in our networks' construction order: `adapters.py` pairs it with a built network's
attention projections as named by the UNet's key map (dbdist/formats/unet_keys.py) and checks
that names and shapes agree.
"""

import dataclasses

from dbdist.config import ModelConfig

UNET, TEXT_ENCODER = "unet", "text_encoder"
# Our layer attribute -> diffusers' module name, per attention.
UNET_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "out_proj": "to_out.0"}
TEXT_PROJECTIONS = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "out_proj"}


@dataclasses.dataclass(frozen=True)
class Target:
    network: str  # UNET or TEXT_ENCODER
    module: str  # diffusers' name inside the network, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    in_features: int
    out_features: int


def unet_transformer_names(unet_config):
    """[(diffusers' name of each spatial transformer, its level)] in our construction order.

    diffusers numbers down blocks from the highest resolution, and up blocks from the lowest:
    level L's up block is `up_blocks.(levels - 1 - L)`. Each level has `layers_per_block`
    transformers on the way down and one more on the way up; the middle block has one.
    """
    levels = len(unet_config.block_channels)
    names = []
    for level, attends in enumerate(unet_config.block_attention):
        if attends:
            names += [(f"down_blocks.{level}.attentions.{i}", level) for i in range(unet_config.layers_per_block)]
    names.append(("mid_block.attentions.0", levels - 1))
    for level in reversed(range(levels)):
        if unet_config.block_attention[level]:
            up = levels - 1 - level
            names += [(f"up_blocks.{up}.attentions.{i}", level) for i in range(unet_config.layers_per_block + 1)]
    return names


def unet_targets(unet_config):
    targets = []
    for transformer, level in unet_transformer_names(unet_config):
        width = unet_config.block_channels[level]
        for attention, context in (("attn1", width), ("attn2", unet_config.context_dim)):
            prefix = f"{transformer}.transformer_blocks.0.{attention}"
            for ours, theirs in UNET_PROJECTIONS.items():
                # Keys and values read the context (the text, in cross-attention); queries and output the image tokens.
                in_features = context if ours in ("to_k", "to_v") else width
                targets.append(Target(UNET, f"{prefix}.{theirs}", in_features, width))
    return targets


def text_encoder_targets(text_config):
    width = text_config.width
    return [
        Target(TEXT_ENCODER, f"text_model.encoder.layers.{layer}.self_attn.{theirs}", width, width)
        for layer in range(text_config.num_layers)
        for theirs in TEXT_PROJECTIONS.values()
    ]


def lora_targets(model_config: ModelConfig, networks=(UNET,)):
    """[Target] of the named networks, UNet first."""
    targets = []
    if UNET in networks:
        targets += unet_targets(model_config.unet)
    if TEXT_ENCODER in networks:
        targets += text_encoder_targets(model_config.text_encoder)
    return targets
