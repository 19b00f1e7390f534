"""Each dbdist network's key map and place in a diffusers folder, and moving tensors through them.

The containers (diffusers_folder.py, single_file.py, export.py) call only this module: it
checks every tensor a network needs before assigning any (a bad file leaves the model as it
was), and names the file, the first missing key or the first tensor of another shape.
"""

import dataclasses
import importlib

import keras
import numpy as np

from dbdist.errors import UserError
from dbdist.formats import tensor_map


@dataclasses.dataclass(frozen=True)
class NetworkFormat:
    subfolder: str  # the diffusers pipeline component holding it
    file_stem: str  # <stem>.safetensors inside the subfolder
    module: str  # its key map module: key_map(model, model_config, layout) [, canonical_tensors(tensors, layout)]


NETWORK_FORMATS = {
    "unet": NetworkFormat("unet", "diffusion_pytorch_model", "dbdist.formats.unet_keys"),
    "vae_encoder": NetworkFormat("vae", "diffusion_pytorch_model", "dbdist.formats.vae_keys"),
    "vae_decoder": NetworkFormat("vae", "diffusion_pytorch_model", "dbdist.formats.vae_keys"),
    "text_encoder": NetworkFormat("text_encoder", "model", "dbdist.formats.text_encoder_keys"),
}
DESCRIPTIONS = {"unet": "UNet", "vae_encoder": "VAE encoder", "vae_decoder": "VAE decoder", "text_encoder": "text encoder"}


def _module(network):
    return importlib.import_module(NETWORK_FORMATS[network].module)


def key_map(network, model, model_config, layout):
    """[TensorKey, ...] of a built network in `layout` ("diffusers" or "original")."""
    return _module(network).key_map(model, model_config, layout)


def canonical_tensors(network, tensors, layout):
    """`tensors` under the names key_map uses (older files' names made current; see each key map module)."""
    canonical = getattr(_module(network), "canonical_tensors", None)
    return canonical(tensors, layout) if canonical else tensors


def faithful_config(model_config):
    """`model_config` with every network computing as SD's own code and diffusers do, where a key map
    module says how (its `faithful_config`): for weights imported from their files."""
    for module in dict.fromkeys(fmt.module for fmt in NETWORK_FORMATS.values()):
        faithful = getattr(importlib.import_module(module), "faithful_config", None)
        model_config = faithful(model_config) if faithful else model_config
    return model_config


def diffusers_config(network, model_config):
    """The component's config.json (diffusers' or transformers')."""
    return _module(network).diffusers_config(model_config)


def _as_float32(array):
    return np.asarray(array, dtype=np.float32)  # fp16 and bf16 (ml_dtypes) files are cast on load


def load_tensors(model, network, model_config, layout, tensors, source):
    """Assigns `tensors` ({key: array}, in `layout`) to `model`'s variables, checking all first.

    `source` names the file in errors. UserError for a missing key (the first, and how many)
    or a tensor of another shape (the first, in the model's order)."""
    keys = key_map(network, model, model_config, layout)
    tensors = canonical_tensors(network, tensors, layout)
    what = f"{model_config.preset} {DESCRIPTIONS[network]}"
    missing = [k.key for k in keys if k.key not in tensors]
    if missing:
        raise UserError(
            f"{source}: has no tensor {missing[0]!r} ({len(missing)} of the {len(keys)} tensors of the {what} "
            f"in the {layout} layout are missing); expected {describe_layout(network, layout)}")
    for k in keys:
        shape = tuple(tensors[k.key].shape)
        if shape != k.shape:
            raise UserError(
                f"{source}: tensor {k.key!r} has shape {shape}, but the {what} (--model={model_config.preset}) "
                f"expects {k.shape}; is it a checkpoint of another Stable Diffusion version?")
    values = []
    for k in keys:
        value = k.to_keras(_as_float32(tensors[k.key]))
        if tuple(value.shape) != tuple(k.variable.shape):
            raise AssertionError(f"{k.key}: key map gives {value.shape} for variable {k.variable.path} {k.variable.shape}")
        values.append(value)
    for k, value in zip(keys, values):
        k.variable.assign(value.astype(k.variable.dtype))


def file_tensors(model, network, model_config, layout, dtype=np.float32):
    """{key: array} of `model`'s weights in `layout`, cast to `dtype`: what a writer stores."""
    keys = key_map(network, model, model_config, layout)
    arrays = [np.asarray(keras.ops.convert_to_numpy(k.variable), dtype=np.float32) for k in keys]
    return {key: np.ascontiguousarray(array.astype(dtype)) for key, array in tensor_map.file_tensors(keys, arrays).items()}


def describe_layout(network, layout):
    if layout == "original":
        return ("a single-file Stable Diffusion checkpoint in the original layout (model.diffusion_model.*, "
                "first_stage_model.*, cond_stage_model.*)")
    fmt = NETWORK_FORMATS[network]
    return f"diffusers' {fmt.subfolder}/{fmt.file_stem}.safetensors of a Stable Diffusion pipeline"
