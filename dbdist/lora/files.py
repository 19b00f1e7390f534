"""LoRA files: diffusers' (PEFT) and kohya's (web UI) `.safetensors` layouts, written and read.

- diffusers / PEFT, what `pipe.load_lora_weights(file)` reads (written as `export/lora.safetensors`):
  `unet.<module>.lora_A.weight` (rank, in) and `.lora_B.weight` (out, rank), torch's (out, in)
  orientation; `text_encoder.<module>...` likewise. The format has no alpha (diffusers then
  takes alpha = rank), so alpha / rank is folded into lora_B.
- kohya, what AUTOMATIC1111 / ComfyUI / kohya's scripts read (`export/lora_kohya.safetensors`):
  `lora_unet_<module with _>.lora_down.weight` (rank, in), `.lora_up.weight` (out, rank) and
  `.alpha` (a scalar), `lora_te_<module with _>...` for the text encoder.

Reading also takes diffusers' older layout (`<module>.lora.down.weight`, and the text encoder's
`<module>.lora_linear_layer.down.weight`), which diffusers' own DreamBooth script writes.
A file is checked against the model's targets before anything is applied: every key must name
a target, every A/B pair must be complete, of one rank, and of the target's widths.

numpy and safetensors' numpy API only: no PyTorch, no TensorFlow.
"""

import os
import re
import tempfile

import numpy as np
import safetensors
import safetensors.numpy

from dbdist.errors import MissingInputError, UserError
from dbdist.lora.adapters import AdapterWeights
from dbdist.lora.targets import TEXT_ENCODER, UNET
from dbdist.weights import remote_files

DIFFUSERS, KOHYA = "diffusers", "kohya"
_KOHYA_PREFIX = {UNET: "lora_unet_", TEXT_ENCODER: "lora_te_"}


def kohya_name(target):
    return _KOHYA_PREFIX[target.network] + target.module.replace(".", "_")


def lora_tensors(weights, layout):
    """{key: array} of `weights` ({Target: AdapterWeights}) in `layout` (DIFFUSERS or KOHYA)."""
    tensors = {}
    for target, w in weights.items():
        down, up = w.a.T, w.b.T  # torch's (out, in): down (rank, in), up (out, rank)
        if layout == DIFFUSERS:
            prefix = f"{target.network}.{target.module}"
            tensors[f"{prefix}.lora_A.weight"] = down
            tensors[f"{prefix}.lora_B.weight"] = up * np.float32(w.alpha / w.rank)
        elif layout == KOHYA:
            prefix = kohya_name(target)
            tensors[f"{prefix}.lora_down.weight"] = down
            tensors[f"{prefix}.lora_up.weight"] = up
            tensors[f"{prefix}.alpha"] = np.asarray(w.alpha, np.float32)
        else:
            raise ValueError(f"LoRA layout must be {DIFFUSERS} or {KOHYA}, got {layout!r}")
    # np.array, not np.ascontiguousarray: that makes kohya's 0-d alpha 1-d.
    return {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}


def write_lora_file(path, weights, layout=DIFFUSERS):
    """Writes a LoRA `.safetensors` (local or gs://), under a temporary name first."""
    data = safetensors.numpy.save(lora_tensors(weights, layout), metadata={"format": "pt"})
    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        remote_files.move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# (regex over a key, network, which half) -> the module name in group 1.
_KEY_PATTERNS = (
    (r"unet\.(.+)\.lora_A\.weight", UNET, "down"),
    (r"unet\.(.+)\.lora_B\.weight", UNET, "up"),
    (r"unet\.(.+)\.alpha", UNET, "alpha"),
    (r"unet\.(.+)\.lora\.down\.weight", UNET, "down"),
    (r"unet\.(.+)\.lora\.up\.weight", UNET, "up"),
    (r"text_encoder\.(.+)\.lora_A\.weight", TEXT_ENCODER, "down"),
    (r"text_encoder\.(.+)\.lora_B\.weight", TEXT_ENCODER, "up"),
    (r"text_encoder\.(.+)\.alpha", TEXT_ENCODER, "alpha"),
    (r"text_encoder\.(.+)\.lora_linear_layer\.down\.weight", TEXT_ENCODER, "down"),
    (r"text_encoder\.(.+)\.lora_linear_layer\.up\.weight", TEXT_ENCODER, "up"),
    (r"(lora_unet_.+)\.lora_down\.weight", UNET, "down"),
    (r"(lora_unet_.+)\.lora_up\.weight", UNET, "up"),
    (r"(lora_unet_.+)\.alpha", UNET, "alpha"),
    (r"(lora_te_.+)\.lora_down\.weight", TEXT_ENCODER, "down"),
    (r"(lora_te_.+)\.lora_up\.weight", TEXT_ENCODER, "up"),
    (r"(lora_te_.+)\.alpha", TEXT_ENCODER, "alpha"),
)


def _read_tensors(path):
    try:
        with remote_files.local_copy(path) as local:
            return safetensors.numpy.load_file(local)
    except FileNotFoundError as err:
        raise MissingInputError(f"LoRA file {path} does not exist") from err
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise UserError(f"LoRA file {path} is not a readable .safetensors file ({err})") from err


def read_lora_file(path, targets):
    """{Target: AdapterWeights} from a LoRA file whose keys and shapes fit `targets`; UserError otherwise.

    The weights' product (alpha / rank) a @ b is the file's delta W in our (in, out) orientation.
    """
    tensors = _read_tensors(path)
    by_name = {(t.network, t.module): t for t in targets}
    by_name.update({(t.network, kohya_name(t)): t for t in targets})
    example = {network: next((t.module for t in targets if t.network == network), None) for network in (UNET, TEXT_ENCODER)}
    parts = {}  # Target -> {"down"/"up"/"alpha": (key, array)}
    for key in sorted(tensors):
        match = next(((m, network, half) for pattern, network, half in _KEY_PATTERNS
                      for m in [re.fullmatch(pattern, key)] if m), None)
        if match is None:
            raise UserError(
                f"LoRA file {path}: key {key!r} is not a LoRA weight of a known layout (diffusers' "
                "'unet.<module>.lora_A.weight', kohya's 'lora_unet_<module>.lora_down.weight')")
        m, network, half = match
        target = by_name.get((network, m.group(1)))
        if target is None:
            where = f"this model's {network}" if example[network] else f"this model (it has no {network} targets here)"
            raise UserError(
                f"LoRA file {path}: key {key!r} adapts {m.group(1)!r}, which is not an attention projection of {where}; "
                f"expected names such as {example[network]!r} (the file may be for another model, or adapt other layers)")
        parts.setdefault(target, {})[half] = (key, tensors[key])
    if not parts:
        raise UserError(f"LoRA file {path} has no tensors")
    return {target: _adapter(path, target, found) for target, found in parts.items()}


def _adapter(path, target, found):
    if "down" not in found or "up" not in found:
        key = (found.get("down") or found.get("up") or found.get("alpha"))[0]
        raise UserError(f"LoRA file {path}: {key!r} has no matching {'up (B)' if 'down' in found else 'down (A)'} weight")
    (down_key, down), (up_key, up) = found["down"], found["up"]
    rank = down.shape[0] if down.ndim == 2 else None
    expected = {down_key: (rank, target.in_features), up_key: (target.out_features, rank)}
    for key, array in ((down_key, down), (up_key, up)):
        if array.ndim != 2 or tuple(array.shape) != expected[key] or not rank:
            raise UserError(
                f"LoRA file {path}: {key!r} has shape {tuple(array.shape)}, expected {expected[key]} for "
                f"{target.network} {target.module} (in {target.in_features}, out {target.out_features}, "
                f"rank {rank} from its down weight)")
    alpha = float(rank)  # diffusers: no alpha means alpha = rank
    if "alpha" in found:
        alpha_key, value = found["alpha"]
        if np.size(value) != 1:
            raise UserError(f"LoRA file {path}: {alpha_key!r} has shape {tuple(np.shape(value))}, expected a scalar")
        alpha = float(np.reshape(value, ()))
    return AdapterWeights(down.T.astype(np.float32), up.T.astype(np.float32), alpha)
