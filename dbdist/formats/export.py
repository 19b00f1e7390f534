"""The release export in the formats other tools load: a diffusers folder and a single file.

  export/diffusers/      a StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/,
                         tokenizer/, scheduler/), fp32: `StableDiffusionPipeline.from_pretrained` loads it.
                         The VAE, tokenizer and (unless trained) text encoder are the base weights'. When
                         those are not at hand (no --weights and keras-cv's files not downloadable, no
                         vocabulary), it holds unet/ (and a trained text_encoder/) with their config.json.
  export/model.safetensors   the original single-file layout (model.diffusion_model.*, first_stage_model.*,
                         cond_stage_model.*), what AUTOMATIC1111, ComfyUI and `from_single_file` load;
                         fp16 by default (`export_dtype`). UNet only when the base networks are not at hand.

Every file is written under a temporary name and renamed; model_index.json is written last, so a
folder that has it is complete. Engine-free: both engines call `export_formats` with Keras models.
"""

import json
import os
import tempfile

import ml_dtypes
import numpy as np
from absl import logging

from dbdist.formats import networks, safetensors_io
from dbdist.weights import remote_files

EXPORT_DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "fp32": np.float32}
DIFFUSERS_DIR, SINGLE_FILE = "diffusers", "model.safetensors"
# transformers refuses a .safetensors without it ("does not contain the valid metadata").
_METADATA = {"format": "pt"}
_DIFFUSERS_VERSION = "0.30.0"
_BASE_NETWORKS = ("vae_encoder", "vae_decoder", "text_encoder")


def _write_json(obj, path):
    fd, tmp = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        remote_files.move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def scheduler_config(model_config):
    """diffusers' DDIMScheduler config of the schedule dbdist trains and samples with."""
    s = model_config.schedule
    return {"_class_name": "DDIMScheduler", "_diffusers_version": _DIFFUSERS_VERSION, "beta_start": s.beta_start,
            "beta_end": s.beta_end, "beta_schedule": s.beta_schedule, "num_train_timesteps": s.num_train_timesteps,
            "prediction_type": s.prediction_type, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def model_index():
    return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _DIFFUSERS_VERSION,
            "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def _component_tensors(models, model_config, layout, dtype):
    """{component subfolder: {key: array}} of the networks in `models` ({network: keras model})."""
    components = {}
    for network, model in models.items():
        subfolder = networks.NETWORK_FORMATS[network].subfolder
        components.setdefault(subfolder, {}).update(networks.file_tensors(model, network, model_config, layout, dtype))
    return components


def _base_networks(model_config, missing, weights):
    """{network: model} of the base weights' networks not trained, or None (with the reason logged)."""
    from dbdist.weights.pretrained import load_networks

    try:
        loaded = load_networks(model_config, missing, weights)
    except Exception as err:  # noqa: BLE001 (any failure to fetch the base only narrows the export)
        logging.warning("export: the base networks (%s) are not at hand (%s); exporting the trained networks only",
                        ", ".join(missing), err)
        return None
    return {network: getattr(loaded, network) for network in missing}


def _write_tokenizer(folder, model_config, weights, vocab_path):
    """tokenizer/ from a diffusers --weights folder, else made from the CLIP vocabulary; False if neither."""
    from dbdist.formats import diffusers_folder, text_encoder_keys, tokenizer_files
    from dbdist.text.tokenizer import resolve_vocab_path

    if weights and diffusers_folder.is_diffusers_folder(weights):
        source = os.path.join(weights, "tokenizer")
        for name in (tokenizer_files.VOCAB_JSON, tokenizer_files.MERGES_TXT, tokenizer_files.SPECIAL_TOKENS_MAP,
                     tokenizer_files.TOKENIZER_CONFIG):
            if remote_files.exists(os.path.join(source, name)):
                with remote_files.local_copy(os.path.join(source, name)) as local:
                    remote_files.move_into_place(local, os.path.join(folder, name))
        return True
    try:
        vocab = resolve_vocab_path(vocab_path)
    except Exception as err:  # noqa: BLE001 (no vocabulary: a pipeline folder without its tokenizer)
        logging.warning("export: no CLIP vocabulary at hand (%s); the diffusers folder gets no tokenizer/", err)
        return False
    pad = tokenizer_files.SD2_PAD_TOKEN if text_encoder_keys.is_open_clip(model_config) else tokenizer_files.SD1_PAD_TOKEN
    tokenizer_files.write_tokenizer_folder(folder, vocab, pad_token=pad, max_length=model_config.text_encoder.max_length)
    return True


def export_formats(export_dir, model_config, trained, *, weights="", vocab_path="", export_dtype="fp16"):
    """Writes `export_dir`/diffusers/ and `export_dir`/model.safetensors (local or gs://).

    `trained`: {network: keras model} of what training changed (the UNet; the text encoder with
    --train_text_encoder); the other networks come from `weights` (the run's --weights, "" for the
    preset's default). Returns the paths written."""
    if export_dtype not in EXPORT_DTYPES:
        raise ValueError(f"export_dtype must be one of {sorted(EXPORT_DTYPES)}, got {export_dtype!r}")
    missing = tuple(n for n in _BASE_NETWORKS if n not in trained)
    base = _base_networks(model_config, missing, weights) if missing else {}
    everything = {**trained, **(base or {})}
    folder = os.path.join(export_dir, DIFFUSERS_DIR)
    written = []
    for subfolder, tensors in _component_tensors(everything, model_config, "diffusers", np.float32).items():
        network = next(n for n in everything if networks.NETWORK_FORMATS[n].subfolder == subfolder)
        stem = networks.NETWORK_FORMATS[network].file_stem
        _write_json(networks.diffusers_config(network, model_config), os.path.join(folder, subfolder, "config.json"))
        safetensors_io.write(tensors, os.path.join(folder, subfolder, f"{stem}.safetensors"), metadata=_METADATA)
        written.append(os.path.join(folder, subfolder))
    if base is not None and _write_tokenizer(os.path.join(folder, "tokenizer"), model_config, weights, vocab_path):
        _write_json(scheduler_config(model_config), os.path.join(folder, "scheduler", "scheduler_config.json"))
        _write_json(model_index(), os.path.join(folder, "model_index.json"))  # last: the folder is complete
        written.append(folder)
    single = {}
    for tensors in _component_tensors(everything, model_config, "original", EXPORT_DTYPES[export_dtype]).values():
        single.update(tensors)
    safetensors_io.write(single, os.path.join(export_dir, SINGLE_FILE), metadata=_METADATA)
    written.append(os.path.join(export_dir, SINGLE_FILE))
    logging.info("exported %s (%s single file%s)", ", ".join(written), export_dtype,
                 "" if base is not None else ", UNet only")
    return written

