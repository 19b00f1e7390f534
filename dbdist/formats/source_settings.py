"""The model settings an imported --weights source states: prediction type and training resolution.

A diffusers folder says both: `scheduler/scheduler_config.json`'s `prediction_type` and the UNet's
`sample_size` (latent pixels) x the VAE's downsampling. A single .safetensors has no scheduler;
we decide as diffusers' single-file loader does (src/diffusers/loaders/single_file_utils.py,
`infer_diffusers_model_type` and `_legacy_load_scheduler`): an SD 2.x file (cross-attention
keys of width 1024) is the 768 px v-prediction model unless its `global_step` is 875000 (SD 2's
512-base, epsilon); SD 1.x files are epsilon. Only the 768 px v model states a resolution: the
others (diffusers' 512) leave it to the preset, which is 512 for sd-v1/sd-v2 and is what a small
model of the same kind (tiny) was made at. --prediction_type overrides what the source says.
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from dbdist.errors import UserError
from dbdist.formats import detect, safetensors_io
from dbdist.weights import remote_files

PREDICTION_TYPES = ("epsilon", "v_prediction")
SCHEDULER_CONFIG = os.path.join("scheduler", "scheduler_config.json")
# diffusers' CHECKPOINT_KEY_NAMES["v2"]: its last dimension is the text width, 1024 in SD 2.x.
_SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_SD2_BASE_GLOBAL_STEP = 875000


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    prediction_type: Optional[str] = None  # None: the source does not say
    resolution: Optional[int] = None


def read_source_settings(weights, downsample_factor):
    """SourceSettings of a --weights path (empty for keras-cv folders and no weights)."""
    if not weights:
        return SourceSettings()
    found = detect.weights_format(weights)
    if found == detect.DIFFUSERS:
        return _diffusers_settings(str(weights), downsample_factor)
    if found == detect.SINGLE_FILE:
        return _single_file_settings(str(weights))
    return SourceSettings()


def _diffusers_settings(folder, downsample_factor):
    prediction_type = None
    scheduler_path = os.path.join(folder, SCHEDULER_CONFIG)
    if remote_files.exists(scheduler_path):
        prediction_type = _read_json(scheduler_path).get("prediction_type", "epsilon")  # diffusers' default
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"{scheduler_path}: prediction_type {prediction_type!r} is not supported; "
                            f"expected one of {list(PREDICTION_TYPES)}")
    resolution = None
    unet_config = os.path.join(folder, "unet", "config.json")
    if remote_files.exists(unet_config):
        sample_size = _read_json(unet_config).get("sample_size")
        resolution = int(sample_size) * downsample_factor if sample_size else None
    return SourceSettings(prediction_type, resolution)


def _read_json(path):
    with remote_files.local_copy(path) as local, open(local) as f:
        return json.load(f)


def _single_file_settings(path):
    header = safetensors_io.read_header(path)
    if _SD2_KEY not in header or header[_SD2_KEY][1][-1] != 1024:
        return SourceSettings("epsilon")
    if "global_step" in header:
        with safetensors_io.open_tensors(path) as (_, get):
            if int(np.asarray(get("global_step")).reshape(-1)[0]) == _SD2_BASE_GLOBAL_STEP:
                return SourceSettings("epsilon")
    return SourceSettings("v_prediction", 768)
