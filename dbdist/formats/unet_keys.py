"""The UNet's variables as diffusers' `UNet2DConditionModel` and the original SD checkpoint name them.

Two layouts of the same tensors (as diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py
pairs them), for the UNet `dbdist.models.unet.build_unet` builds from any `UNetConfig`:

  diffusers                               original (single file, under `model.diffusion_model.`)
  time_embedding.linear_1 / linear_2      time_embed.0 / time_embed.2
  conv_in                                 input_blocks.0.0
  down_blocks.i.resnets.j                 input_blocks.{i*(L+1)+j+1}.0
  down_blocks.i.attentions.j              input_blocks.{i*(L+1)+j+1}.1
  down_blocks.i.downsamplers.0.conv       input_blocks.{(i+1)*(L+1)}.0.op
  mid_block.resnets.0 / attentions.0 / resnets.1    middle_block.0 / .1 / .2
  up_blocks.u.resnets.j                   output_blocks.{u*(L+1)+j}.0
  up_blocks.u.attentions.j                output_blocks.{u*(L+1)+j}.1
  up_blocks.u.upsamplers.0                output_blocks.{u*(L+1)+L}.{2 if level u attends else 1}
  conv_norm_out / conv_out                out.0 / out.2

(L = layers_per_block; up block u is the level `levels - 1 - u`, lowest resolution first.)
Inside a ResBlock, diffusers' norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut are the original's
in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection; a transformer's
names are the same in both (norm, proj_in, transformer_blocks.0.{norm1, attn1.to_q, to_k, to_v,
to_out.0, norm2, attn2.*, norm3, ff.net.0.proj, ff.net.2}, proj_out). proj_in/proj_out are 1x1
convolutions in SD 1.x and Linear in SD 2.x (`UNetConfig.linear_projection`).

Public:
  key_map(unet, model_config, layout) -> [TensorKey, ...]   every variable, in the model's order
  attention_projections(unet, model_config) -> [(diffusers module name, Dense layer), ...]
      the q/k/v/out projections of every attention (for LoRA), e.g.
      ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", <Dense>)
  to_original_name(diffusers_name, unet_config) -> the same module's name in the original layout
  diffusers_config(model_config) -> diffusers' unet/config.json for this UNet
  faithful_config(model_config) -> model_config with the UNet computing as diffusers' (exact GELU, epsilon 1e-6)
ORIGINAL_PREFIX is the original layout's prefix of every UNet key.
"""

import dataclasses

import keras

from dbdist.formats import tensor_map
from dbdist.models.unet_blocks import ResBlock, SpatialTransformer, Upsample

ORIGINAL_PREFIX = "model.diffusion_model."
# diffusers' Transformer2DModel (and SD's SpatialTransformer) normalise with this epsilon.
ORIGINAL_NORM_EPSILON = 1e-6

_RESNET_PARTS = (  # (our attribute, diffusers name, original name)
    ("norm1", "norm1", "in_layers.0"),
    ("conv1", "conv1", "in_layers.2"),
    ("time_proj", "time_emb_proj", "emb_layers.1"),
    ("norm2", "norm2", "out_layers.0"),
    ("conv2", "conv2", "out_layers.3"),
    ("shortcut", "conv_shortcut", "skip_connection"),
)
_ATTENTION_PARTS = (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("out_proj", "to_out.0"))


def _blocks(config):
    """{layer kind: [(diffusers prefix, original prefix), ...]} in the order build_unet applies them.

    A functional Keras model lists its layers in graph order, which for each kind of top-level
    layer is the order they are applied in; keys are paired with layers kind by kind.
    """
    levels, per_block = len(config.block_channels), config.layers_per_block
    stride = per_block + 1  # original numbering: each level's blocks, then its downsampler
    blocks = {"dense": [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2")],
              "conv": [("conv_in", "input_blocks.0.0")], "res": [], "attn": [], "up": [],
              "norm": [("conv_norm_out", "out.0")]}
    for level in range(levels):
        for j in range(per_block):
            n = level * stride + j + 1
            blocks["res"].append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0"))
            if config.block_attention[level]:
                blocks["attn"].append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1"))
        if level != levels - 1:
            blocks["conv"].append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{(level + 1) * stride}.0.op"))
    blocks["res"] += [("mid_block.resnets.0", "middle_block.0"), ("mid_block.resnets.1", "middle_block.2")]
    blocks["attn"].append(("mid_block.attentions.0", "middle_block.1"))
    for u, level in enumerate(reversed(range(levels))):
        attends = config.block_attention[level]
        for j in range(stride):
            n = u * stride + j
            blocks["res"].append((f"up_blocks.{u}.resnets.{j}", f"output_blocks.{n}.0"))
            if attends:
                blocks["attn"].append((f"up_blocks.{u}.attentions.{j}", f"output_blocks.{n}.1"))
        if level != 0:
            blocks["up"].append((f"up_blocks.{u}.upsamplers.0", f"output_blocks.{u * stride + per_block}.{2 if attends else 1}"))
    blocks["conv"].append(("conv_out", "out.2"))
    return blocks


_KINDS = {  # layer kind -> the Keras class of the top-level layers of that kind
    "dense": keras.layers.Dense,
    "conv": keras.layers.Conv2D,
    "res": ResBlock,
    "attn": SpatialTransformer,
    "up": Upsample,
    "norm": keras.layers.GroupNormalization,
}


def _paired_layers(unet, config):
    """[(layer, diffusers prefix, original prefix, kind), ...] for every top-level layer with weights."""
    blocks = _blocks(config)
    pairs = []
    for kind, cls in _KINDS.items():
        layers = [layer for layer in unet.layers if type(layer) is cls]
        if len(layers) != len(blocks[kind]):
            raise ValueError(
                f"UNet '{unet.name}' has {len(layers)} {cls.__name__} layers, but its config {config} "
                f"implies {len(blocks[kind])}; was it built from another config?")
        pairs += [(layer, d, o, kind) for layer, (d, o) in zip(layers, blocks[kind])]
    with_weights = [layer for layer in unet.layers if layer.weights]
    if len(with_weights) != len(pairs):
        raise ValueError(f"UNet '{unet.name}' has {len(with_weights)} layers with weights; the key map covers {len(pairs)}")
    order = {id(layer): i for i, layer in enumerate(with_weights)}
    return sorted(pairs, key=lambda pair: order[id(pair[0])])


def _resnet(block, prefix, layout):
    return tensor_map.resnet_keys(block, prefix, layout, _RESNET_PARTS)


def _attention_layers(block):
    """[(name inside the transformer, Dense), ...] of one SpatialTransformer's q/k/v/out projections."""
    inner = block.transformer_block
    return [(f"transformer_blocks.0.{attn}.{name}", getattr(getattr(inner, attn), attribute))
            for attn in ("attn1", "attn2") for attribute, name in _ATTENTION_PARTS]


def _transformer(block, prefix):
    inner, t = block.transformer_block, f"{prefix}.transformer_blocks.0"
    attention = dict(_attention_layers(block))
    keys = tensor_map.norm(block.norm, f"{prefix}.norm") + tensor_map.projection(block.proj_in, f"{prefix}.proj_in")
    for n, attn in ((1, "attn1"), (2, "attn2")):
        keys += tensor_map.norm(getattr(inner, f"norm{n}"), f"{t}.norm{n}")
        for name, layer in attention.items():
            if name.startswith(f"transformer_blocks.0.{attn}."):
                keys += tensor_map.dense(layer, f"{prefix}.{name}")
    keys += tensor_map.norm(inner.norm3, f"{t}.norm3")
    keys += tensor_map.dense(inner.geglu.dense, f"{t}.ff.net.0.proj") + tensor_map.dense(inner.dense, f"{t}.ff.net.2")
    return keys + tensor_map.projection(block.proj_out, f"{prefix}.proj_out")


def key_map(unet, model_config, layout):
    """[TensorKey, ...]: every variable of `unet` (built from `model_config.unet`), in its order, with its key
    and shape in `layout` ("diffusers": keys of unet/diffusion_pytorch_model.safetensors; "original":
    full keys of a single-file checkpoint, `model.diffusion_model.` + ...)."""
    tensor_map.check_layout(layout)
    keys = []
    for layer, diffusers_prefix, original_prefix, kind in _paired_layers(unet, model_config.unet):
        prefix = diffusers_prefix if layout == "diffusers" else ORIGINAL_PREFIX + original_prefix
        if kind == "res":
            keys += _resnet(layer, prefix, layout)
        elif kind == "attn":
            keys += _transformer(layer, prefix)
        elif kind == "up":
            keys += tensor_map.conv(layer.conv, f"{prefix}.conv")
        elif kind == "dense":
            keys += tensor_map.dense(layer, prefix)
        elif kind == "conv":
            keys += tensor_map.conv(layer, prefix)
        else:
            keys += tensor_map.norm(layer, prefix)
    _check_covers(unet, keys)
    return keys


def _check_covers(unet, keys):
    """Every weight of `unet` has exactly one key. Under LoRA (Keras' `enable_lora`, dbdist/lora) a Dense's
    `kernel` is its stored kernel plus the adapters' product, so it is exported merged; the adapters
    themselves are not UNet weights (their file is their own)."""
    covered = {id(k.variable) for k in keys}
    if len(covered) != len(keys):
        raise AssertionError("UNet key map gives a variable two keys")
    covered |= {id(layer._kernel) for layer in unet._flatten_layers() if getattr(layer, "lora_enabled", False)}
    missing = [v.path for v in unet.weights if id(v) not in covered and not v.path.endswith(("lora_kernel_a", "lora_kernel_b"))]
    if missing:
        raise AssertionError(f"UNet key map misses {missing[:3]}")


def attention_projections(unet, model_config):
    """[(diffusers module name, Dense layer), ...] for the to_q/to_k/to_v/to_out.0 projections of the
    self- (attn1) and cross-attention (attn2) of every transformer block, down, mid then up.

    The names are diffusers' (what `pipe.load_lora_weights` and kohya-style `lora_unet_*` keys are
    derived from); `to_original_name` gives the single-file layout's."""
    pairs = []
    for layer, diffusers_prefix, _, kind in _paired_layers(unet, model_config.unet):
        if kind == "attn":
            pairs += [(f"{diffusers_prefix}.{name}", dense) for name, dense in _attention_layers(layer)]
    return pairs


def to_original_name(diffusers_name, unet_config):
    """'input_blocks.1.1.transformer_blocks.0.attn1.to_q' for 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'
    (without ORIGINAL_PREFIX); any module name under one of the UNet's blocks."""
    for kind, blocks in _blocks(unet_config).items():
        for diffusers_prefix, original_prefix in blocks:
            if diffusers_name == diffusers_prefix or diffusers_name.startswith(diffusers_prefix + "."):
                rest = diffusers_name[len(diffusers_prefix):]
                if kind == "res":
                    for _, d, o in _RESNET_PARTS:
                        if rest == f".{d}" or rest.startswith(f".{d}."):
                            rest = f".{o}" + rest[len(d) + 1:]
                            break
                return original_prefix + rest
    raise ValueError(f"{diffusers_name!r} names no module of this UNet")


def faithful_config(model_config):
    """`model_config` with a UNet that computes as SD's own code and diffusers do: exact GELU in the
    GEGLU feed-forward and GroupNorm epsilon 1e-6 before each transformer (keras-cv: tanh GELU, 1e-5).
    For weights imported from a diffusers folder or a single file: on the small fixtures the outputs
    then differ from diffusers' by float round-off (2.7e-6) instead of 8.2e-4."""
    unet = dataclasses.replace(model_config.unet, geglu_activation="gelu_erf", transformer_norm_epsilon=ORIGINAL_NORM_EPSILON)
    return dataclasses.replace(model_config, unet=unet)


def diffusers_config(model_config, diffusers_version="0.30.0"):
    """The `unet/config.json` diffusers' UNet2DConditionModel builds this UNet from.

    `attention_head_dim` holds the number of heads per level: diffusers' SD configs use it so
    (a naming slip diffusers keeps for compatibility: SD 2.x's [5, 10, 20, 20] are head counts)."""
    c = model_config.unet
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.block_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.block_attention)]
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": diffusers_version,
        "act_fn": "silu",
        "attention_head_dim": list(c.attention_heads),
        "block_out_channels": list(c.block_channels),
        "center_input_sample": False,
        "cross_attention_dim": c.context_dim,
        "down_block_types": down,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": c.norm_groups,
        "out_channels": c.latent_channels,
        "sample_size": model_config.latent_size,
        "up_block_types": up,
        "use_linear_projection": c.linear_projection,
    }
