"""One variable <-> one tensor in a PyTorch-layout file, and the few layer kinds that need one.

PyTorch stores a Linear weight as (out, in) and a Conv2d weight as (out, in, kh, kw);
Keras stores Dense kernels as (in, out) and Conv2D kernels as (kh, kw, in, out).
Norm layers differ only in names (gamma/beta vs weight/bias). The key maps of each
network (unet_keys.py, ...) are lists of these, built per layer with the helpers below.
"""

import dataclasses
from typing import Callable

import numpy as np

LAYOUTS = ("diffusers", "original")


@dataclasses.dataclass(frozen=True)
class TensorKey:
    """Where one Keras variable lives in a file, and how its array changes on the way."""

    variable: object  # keras.Variable
    key: str  # the tensor's name in the file
    shape: tuple  # the tensor's shape in the file
    to_keras: Callable[[np.ndarray], np.ndarray]  # file array -> variable array
    from_keras: Callable[[np.ndarray], np.ndarray]  # variable array -> file array
    # (index, count) when several variables share one tensor, stacked on axis 0 (OpenCLIP's fused
    # q/k/v `in_proj_weight`): to_keras still takes the whole tensor (and slices its part), but
    # from_keras gives only this variable's block; `file_tensors` stacks the blocks. None: the whole tensor.
    part: tuple = None


def file_tensors(tensor_keys, variable_arrays):
    """{key: file array} for `tensor_keys` and their variables' arrays (same order), parts stacked.

    What a writer stores: each variable through its from_keras; a tensor shared by
    several variables (`part`) is their blocks concatenated on axis 0 in part order.
    """
    tensors, parts = {}, {}
    for tensor_key, array in zip(tensor_keys, variable_arrays, strict=True):
        if tensor_key.part is None:
            tensors[tensor_key.key] = tensor_key.from_keras(array)
        else:
            parts.setdefault(tensor_key.key, {})[tensor_key.part] = tensor_key.from_keras(array)
    for key, blocks in parts.items():
        count = next(iter(blocks))[1]
        if sorted(blocks) != [(i, count) for i in range(count)]:
            raise ValueError(f"{key}: parts {sorted(blocks)} do not make up the tensor's {count} blocks")
        tensors[key] = np.concatenate([blocks[(i, count)] for i in range(count)], axis=0)
    return tensors


def _same(array):
    return array


def _transpose_dense(array):
    return np.ascontiguousarray(array.T)


def _conv_to_keras(array):  # OIHW -> HWIO
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))


def _conv_from_keras(array):  # HWIO -> OIHW
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))


def check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def dense(layer, key):
    """A Keras Dense as torch.nn.Linear `key` (`key.weight` (out, in), `key.bias`)."""
    # The stored variable: with LoRA adapters (dbdist/lora) `layer.kernel` is a computed sum, not a variable.
    kernel = layer._kernel
    keys = [TensorKey(kernel, f"{key}.weight", tuple(reversed(kernel.shape)), _transpose_dense, _transpose_dense)]
    if layer.use_bias:
        keys.append(TensorKey(layer.bias, f"{key}.bias", tuple(layer.bias.shape), _same, _same))
    return keys


def conv(layer, key):
    """A Keras Conv2D as torch.nn.Conv2d `key` (`key.weight` (out, in, kh, kw), `key.bias`)."""
    kernel = layer.kernel
    kh, kw, cin, cout = kernel.shape
    keys = [TensorKey(kernel, f"{key}.weight", (cout, cin, kh, kw), _conv_to_keras, _conv_from_keras)]
    if layer.use_bias:
        keys.append(TensorKey(layer.bias, f"{key}.bias", tuple(layer.bias.shape), _same, _same))
    return keys


def norm(layer, key):
    """A Keras GroupNormalization / LayerNormalization as torch's (`key.weight`, `key.bias`)."""
    return [
        TensorKey(layer.gamma, f"{key}.weight", tuple(layer.gamma.shape), _same, _same),
        TensorKey(layer.beta, f"{key}.bias", tuple(layer.beta.shape), _same, _same),
    ]


def embedding(layer, key):
    """A Keras Embedding as torch.nn.Embedding `key` (`key.weight`, same shape)."""
    return [TensorKey(layer.embeddings, f"{key}.weight", tuple(layer.embeddings.shape), _same, _same)]


def projection(layer, key):
    """Dense or 1x1 Conv2D, whichever `layer` is (SD 2.x / SD 1.x transformer proj_in/proj_out)."""
    import keras

    return dense(layer, key) if isinstance(layer, keras.layers.Dense) else conv(layer, key)


def resnet_keys(block, prefix, layout, parts):
    """Keys of a ResBlock's layers: `parts` lists (attribute, diffusers name, original name); norms
    map as norms, `time_proj` (the UNet's) as a Dense, the rest as convolutions."""
    keys = []
    for attribute, diffusers_name, original_name in parts:
        layer = getattr(block, attribute)
        if layer is None:  # no shortcut where the width does not change
            continue
        name = f"{prefix}.{diffusers_name if layout == 'diffusers' else original_name}"
        keys += (norm if attribute.startswith("norm") else dense if attribute == "time_proj" else conv)(layer, name)
    return keys
