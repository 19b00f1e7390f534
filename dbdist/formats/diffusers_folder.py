"""A diffusers pipeline folder: `model_index.json` and one subfolder per component.

  model_index.json
  unet/config.json, unet/diffusion_pytorch_model[.fp16].safetensors
  vae/config.json, vae/diffusion_pytorch_model[.fp16].safetensors     (dbdist's VAE encoder and decoder)
  text_encoder/config.json, text_encoder/model[.fp16].safetensors       (transformers' CLIPTextModel)
  tokenizer/vocab.json, tokenizer/merges.txt
  scheduler/scheduler_config.json

A component may also be sharded (`<stem>.safetensors.index.json` and its shards). Components stored
only as pickles (`.bin`) are refused: unpickling runs code.
"""

import json
import os

from absl import logging

from dbdist.errors import MissingInputError
from dbdist.formats import networks, pickles, safetensors_io
from dbdist.weights import remote_files

MODEL_INDEX = "model_index.json"


def is_diffusers_folder(path):
    return remote_files.exists(os.path.join(str(path), MODEL_INDEX))


def _read_json(path):
    with remote_files.local_copy(path) as local, open(local) as f:
        return json.load(f)


def component_files(component_dir, network):
    """The .safetensors file(s) of `network` in its component folder (e.g. `.../unet`)."""
    stem = networks.NETWORK_FORMATS[network].file_stem
    for variant in ("", ".fp16"):
        single = os.path.join(component_dir, f"{stem}{variant}.safetensors")
        if remote_files.exists(single):
            return [single]
        index = f"{single}.index.json"
        if remote_files.exists(index):
            shards = sorted(set(_read_json(index)["weight_map"].values()))
            return [os.path.join(component_dir, shard) for shard in shards]
    for variant in ("", ".fp16"):
        pickled = os.path.join(component_dir, f"{stem}{variant}.bin")
        if remote_files.exists(pickled):
            pickles.refuse(pickled)
    raise MissingInputError(
        f"{component_dir}: no {stem}.safetensors (nor {stem}.fp16.safetensors or a sharded index); expected the "
        f"{networks.DESCRIPTIONS[network]} of a diffusers Stable Diffusion pipeline")


def read_component(component_dir, network):
    """{key: numpy array} of every tensor in the component's file(s)."""
    tensors = {}
    for path in component_files(component_dir, network):
        with safetensors_io.open_tensors(path) as (keys, get):
            tensors.update({key: get(key) for key in keys})
    return tensors


def load_component(model, network, model_config, component_dir):
    """Loads `network` from a component folder (`<pipeline>/unet`, or one given alone)."""
    files = component_files(component_dir, network)
    logging.info("%s: loading diffusers %s", network, ", ".join(files))
    source = files[0] if len(files) == 1 else component_dir
    networks.load_tensors(model, network, model_config, "diffusers", read_component(component_dir, network), source)


def load(model, network, model_config, folder):
    """Loads `network` from the diffusers pipeline folder `folder` (local or gs://)."""
    component_dir = os.path.join(str(folder), networks.NETWORK_FORMATS[network].subfolder)
    if not remote_files.exists(component_dir):
        raise MissingInputError(
            f"diffusers folder {folder} has no {networks.NETWORK_FORMATS[network].subfolder}/ folder; "
            f"the {networks.DESCRIPTIONS[network]} is expected there")
    load_component(model, network, model_config, component_dir)
