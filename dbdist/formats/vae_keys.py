"""The VAE's variables as diffusers' `AutoencoderKL` and the original SD checkpoint name them.

Two layouts of the same tensors, as diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py
(`vae_conversion_map`, `convert_vae_state_dict`) and src/diffusers/loaders/single_file_utils.py
(`convert_ldm_vae_checkpoint`) pair them, for the encoder and decoder `dbdist.models.vae` builds:

  diffusers (vae/diffusion_pytorch_model.safetensors)   original (single file, under `first_stage_model.`)
  encoder.conv_in                                       encoder.conv_in
  encoder.down_blocks.i.resnets.j                       encoder.down.i.block.j
  encoder.down_blocks.i.downsamplers.0.conv             encoder.down.i.downsample.conv
  {en,de}coder.mid_block.resnets.0 / .1                 {en,de}coder.mid.block_1 / block_2
  {en,de}coder.mid_block.attentions.0                   {en,de}coder.mid.attn_1
  {en,de}coder.conv_norm_out / conv_out                 {en,de}coder.norm_out / conv_out
  quant_conv / post_quant_conv                          quant_conv / post_quant_conv
  decoder.up_blocks.u.resnets.j                         decoder.up.{levels-1-u}.block.j
  decoder.up_blocks.u.upsamplers.0.conv                 decoder.up.{levels-1-u}.upsample.conv

A ResBlock's norm1/conv1/norm2/conv2 are named alike; its 1x1 shortcut is diffusers'
conv_shortcut and the original's nin_shortcut. The mid-block attention differs in kind,
not only in name: diffusers stores group_norm and Linear to_q/to_k/to_v/to_out.0
(weights (C, C)), the original GroupNorm norm and 1x1 Conv2d q/k/v/proj_out (C, C, 1, 1);
dbdist holds 1x1 Conv2D kernels (1, 1, C, C). diffusers folders written before diffusers
0.14 name that attention query/key/value/proj_attn; `canonical_tensors` renames them as
diffusers' ModelMixin._fix_state_dict_keys_on_load does.

Public:
  encoder_key_map(vae_encoder, model_config, layout), decoder_key_map(vae_decoder, model_config, layout)
      -> [TensorKey, ...], every variable in the model's order (layout "diffusers" | "original")
  key_map(model, model_config, layout): either, chosen by the model's outputs (two: the encoder)
  canonical_tensors(tensors, layout) -> the same tensors under the names key_map uses
  diffusers_config(model_config) -> diffusers' vae/config.json for this VAE
  config_from_diffusers(config_json, vae_config[, source]) -> the VAEConfig such a config.json describes
  faithful_config(model_config) -> model_config with the VAE computing as SD's own (GroupNorm epsilon 1e-6)
ORIGINAL_PREFIX is the original layout's prefix of every VAE key.
"""

import dataclasses
import re

import keras
import numpy as np

from dbdist.errors import UserError
from dbdist.formats import tensor_map
from dbdist.models.vae_blocks import VAEAttention, VAEResBlock

ORIGINAL_PREFIX = "first_stage_model."
# The GroupNorm epsilon of SD's own VAE (ldm's Normalize) and of diffusers' AutoencoderKL (resnet_eps=1e-6
# and conv_norm_out's eps=1e-6 in src/diffusers/models/autoencoders/vae.py); keras-cv's, and so the presets', is 1e-5.
ORIGINAL_NORM_EPSILON = 1e-6

_RESNET_PARTS = (("norm1", "norm1", "norm1"), ("conv1", "conv1", "conv1"), ("norm2", "norm2", "norm2"),
                 ("conv2", "conv2", "conv2"), ("shortcut", "conv_shortcut", "nin_shortcut"))
# (our attribute, diffusers name, original name) of the mid-block attention's projections.
_ATTENTION_PARTS = (("q", "to_q", "q"), ("k", "to_k", "k"), ("v", "to_v", "v"), ("proj_out", "to_out.0", "proj_out"))
# Names diffusers < 0.14 wrote for the same projections (diffusers' _fix_state_dict_keys_on_load).
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _middle(part):
    return [("res", f"{part}.mid_block.resnets.0", f"{part}.mid.block_1"),
            ("attn", f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1"),
            ("res", f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")]


def _encoder_blocks(config):
    """[(kind, diffusers prefix, original prefix), ...] in the order build_vae_encoder applies them."""
    levels = len(config.block_channels)
    blocks = [("conv", "encoder.conv_in", "encoder.conv_in")]
    for i in range(levels):
        blocks += [("res", f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
                   for j in range(config.layers_per_block)]
        if i != levels - 1:
            blocks.append(("conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"))
    return blocks + _middle("encoder") + [("norm", "encoder.conv_norm_out", "encoder.norm_out"),
                                         ("conv", "encoder.conv_out", "encoder.conv_out"),
                                         ("conv", "quant_conv", "quant_conv")]


def _decoder_blocks(config):
    """[(kind, diffusers prefix, original prefix), ...] in the order build_vae_decoder applies them."""
    levels = len(config.block_channels)
    blocks = [("conv", "post_quant_conv", "post_quant_conv"), ("conv", "decoder.conv_in", "decoder.conv_in")]
    blocks += _middle("decoder")
    for u, level in enumerate(reversed(range(levels))):  # diffusers numbers up blocks from the bottom
        blocks += [("res", f"decoder.up_blocks.{u}.resnets.{j}", f"decoder.up.{level}.block.{j}")
                   for j in range(config.layers_per_block + 1)]
        if level != 0:
            blocks.append(("conv", f"decoder.up_blocks.{u}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv"))
    return blocks + [("norm", "decoder.conv_norm_out", "decoder.norm_out"),
                     ("conv", "decoder.conv_out", "decoder.conv_out")]


_KINDS = {"conv": keras.layers.Conv2D, "res": VAEResBlock, "attn": VAEAttention,
          "norm": keras.layers.GroupNormalization}


def _same(array):
    return array


def _attention_linear_to_keras(array):  # Linear (out, in) -> 1x1 Conv2D kernel (1, 1, in, out)
    return np.ascontiguousarray(array.T[None, None])


def _attention_linear_from_keras(array):
    return np.ascontiguousarray(array[0, 0].T)


def _attention(block, prefix, layout):
    keys = tensor_map.norm(block.norm, f"{prefix}.{'group_norm' if layout == 'diffusers' else 'norm'}")
    for attribute, diffusers_name, original_name in _ATTENTION_PARTS:
        layer = getattr(block, attribute)
        if layout == "original":
            keys += tensor_map.conv(layer, f"{prefix}.{original_name}")
            continue
        kernel = layer.kernel
        keys.append(tensor_map.TensorKey(kernel, f"{prefix}.{diffusers_name}.weight", tuple(kernel.shape[2:][::-1]),
                                         _attention_linear_to_keras, _attention_linear_from_keras))
        keys.append(tensor_map.TensorKey(layer.bias, f"{prefix}.{diffusers_name}.bias", tuple(layer.bias.shape),
                                         _same, _same))
    return keys


def _resnet(block, prefix, layout):
    return tensor_map.resnet_keys(block, prefix, layout, _RESNET_PARTS)


def _key_map(model, blocks, layout, network):
    tensor_map.check_layout(layout)
    layers = [layer for layer in model.layers if layer.weights]
    if len(layers) != len(blocks) or any(type(l) is not _KINDS[kind] for l, (kind, _, _) in zip(layers, blocks)):
        found = [type(layer).__name__ for layer in layers]
        raise ValueError(f"{network} '{model.name}' has layers {found}; its config implies "
                         f"{[_KINDS[kind].__name__ for kind, _, _ in blocks]}: was it built from another config?")
    keys = []
    for layer, (kind, diffusers_prefix, original_prefix) in zip(layers, blocks):
        prefix = diffusers_prefix if layout == "diffusers" else ORIGINAL_PREFIX + original_prefix
        if kind == "res":
            keys += _resnet(layer, prefix, layout)
        elif kind == "attn":
            keys += _attention(layer, prefix, layout)
        elif kind == "conv":
            keys += tensor_map.conv(layer, prefix)
        else:
            keys += tensor_map.norm(layer, prefix)
    covered = {id(k.variable) for k in keys}
    missing = [v.path for v in model.weights if id(v) not in covered]
    if missing or len(covered) != len(keys):
        raise AssertionError(f"{network} key map covers variables twice or misses {missing[:3]}")
    return keys


def encoder_key_map(vae_encoder, model_config, layout):
    """[TensorKey, ...] of the encoder `build_vae_encoder(model_config.vae)` built, quant_conv included."""
    return _key_map(vae_encoder, _encoder_blocks(model_config.vae), layout, "VAE encoder")


def decoder_key_map(vae_decoder, model_config, layout):
    """[TensorKey, ...] of the decoder `build_vae_decoder(model_config.vae)` built, post_quant_conv included."""
    return _key_map(vae_decoder, _decoder_blocks(model_config.vae), layout, "VAE decoder")


def key_map(model, model_config, layout):
    """The encoder's or the decoder's key map: the encoder is the one with two outputs (mean, log-variance)."""
    if len(model.outputs) == 2:
        return encoder_key_map(model, model_config, layout)
    return decoder_key_map(model, model_config, layout)


_ORIGINAL_ATTENTION_WEIGHT = re.compile(r"first_stage_model\.(en|de)coder\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def canonical_tensors(tensors, layout):
    """`tensors` ({key: array} of a VAE file) under key_map's names and shapes.

    diffusers layout: the legacy attention names (query/key/value/proj_attn) made current.
    Original layout: a mid attention weight stored as a Linear (C, C), as files converted from
    diffusers by some tools hold it, made the (C, C, 1, 1) 1x1 convolution of SD's own files
    (diffusers' single_file_utils accepts both: conv_attn_to_linear squeezes only ndim > 2).
    Other keys pass unchanged.
    """
    renamed = {}
    for key, array in tensors.items():
        if layout == "original":
            if _ORIGINAL_ATTENTION_WEIGHT.fullmatch(key) and array.ndim == 2:
                array = array.reshape(*array.shape, 1, 1)
            renamed[key] = array
            continue
        parts = key.rsplit(".", 2)  # ("encoder.mid_block.attentions.0", "query", "weight")
        if len(parts) == 3 and ".mid_block.attentions." in parts[0] and parts[1] in _LEGACY_ATTENTION_NAMES:
            key = f"{parts[0]}.{_LEGACY_ATTENTION_NAMES[parts[1]]}.{parts[2]}"
            # diffusers' own loader also squeezes the (C, C, 1, 1) kernels some of those files hold.
            array = array.reshape(array.shape[:2]) if parts[2] == "weight" and array.ndim > 2 else array
        renamed[key] = array
    return renamed


def diffusers_config(model_config, diffusers_version="0.30.0"):
    """The `vae/config.json` diffusers' AutoencoderKL builds this VAE from (SD 1.x's and 2.x's are the same)."""
    c = model_config.vae
    levels = len(c.block_channels)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers_version,
        "act_fn": "silu",
        "block_out_channels": list(c.block_channels),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "in_channels": 3,
        "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "norm_num_groups": c.norm_groups,
        "out_channels": 3,
        "sample_size": model_config.resolution,
        "scaling_factor": c.scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def faithful_config(model_config):
    """`model_config` with a VAE that normalises as SD's checkpoints were trained (epsilon 1e-6).

    For weights imported from a diffusers folder or a single file: with keras-cv's 1e-5 the small
    fixture's outputs differ from diffusers' by up to 5e-5 (of about 4), with 1e-6 by float round-off.
    """
    vae = dataclasses.replace(model_config.vae, norm_epsilon=ORIGINAL_NORM_EPSILON)
    return dataclasses.replace(model_config, vae=vae)


def config_from_diffusers(config_json, vae_config, source="vae/config.json"):
    """`vae_config` with the shapes of diffusers' vae/config.json ({...} as read) and SD's epsilon.

    Raises UserError for an AutoencoderKL dbdist does not build (other block types, activation).
    """
    expected = {"_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3}
    for field, value in expected.items():
        if config_json.get(field, value) != value:
            raise UserError(f"{source} has {field}={config_json[field]!r}; dbdist builds {value!r}")
    levels = len(config_json["block_out_channels"])
    for field, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(config_json.get(field, [block] * levels)) != [block] * levels:
            raise UserError(f"{source} has {field}={config_json[field]}; dbdist builds {[block] * levels}")
    return dataclasses.replace(
        vae_config, block_channels=tuple(config_json["block_out_channels"]),
        layers_per_block=config_json.get("layers_per_block", 1), latent_channels=config_json.get("latent_channels", 4),
        norm_groups=config_json.get("norm_num_groups", 32),
        scaling_factor=config_json.get("scaling_factor", vae_config.scaling_factor), norm_epsilon=ORIGINAL_NORM_EPSILON)
