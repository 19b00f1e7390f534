"""What a --weights (or --unet_weights) path holds, and loading a network from it.

--weights takes:
  a keras-cv folder        `.h5` files under keras-cv's or dbdist's names (dbdist/weights/sources.py)
  a diffusers folder       `model_index.json`, unet/, vae/, text_encoder/, tokenizer/ (diffusers_folder.py)
  a single .safetensors    the original single-file layout, SD 1.x or 2.x (single_file.py)
--unet_weights takes a keras-cv `.h5`, a `.safetensors` (either layout) or a diffusers `unet/` folder.
Pickles (.ckpt, .pt, .bin) are refused (pickles.py).
"""

import os

from absl import logging

from dbdist.errors import MissingInputError
from dbdist.formats import diffusers_folder, pickles, single_file
from dbdist.weights import remote_files

KERAS_CV = "keras-cv .h5 folder"
DIFFUSERS = "diffusers folder"
SINGLE_FILE = "single-file .safetensors"


def weights_format(path):
    """KERAS_CV, DIFFUSERS or SINGLE_FILE for a --weights path (logged); refuses pickles.

    A folder without model_index.json is taken as keras-cv's: sources.find_in_directory then names
    the .h5 files it expected, and says that a diffusers folder would have had model_index.json."""
    path = str(path)
    if pickles.is_pickle(path):
        pickles.refuse(path)
    if path.lower().endswith(".safetensors"):
        if not remote_files.exists(path):
            raise MissingInputError(f"--weights file {path} does not exist")
        found = SINGLE_FILE
    elif diffusers_folder.is_diffusers_folder(path):
        found = DIFFUSERS
    else:
        found = KERAS_CV
    logging.info("weights: %s is a %s", path, found)
    return found


def load_from_weights(model, network, model_config, weights, found):
    """Loads `network` from a --weights path of format `found` (DIFFUSERS or SINGLE_FILE)."""
    if found == DIFFUSERS:
        diffusers_folder.load(model, network, model_config, weights)
    elif found == SINGLE_FILE:
        single_file.load(model, network, model_config, weights)
    else:
        raise ValueError(f"load_from_weights takes {DIFFUSERS!r} or {SINGLE_FILE!r}, got {found!r}")


def load_file(model, network, model_config, path):
    """Loads `network` from one file or component folder: .h5 (keras-cv), .safetensors, or a diffusers
    component folder (with config.json, e.g. a pipeline's unet/)."""
    from dbdist.weights.keras_cv_h5 import load_keras_cv_h5

    path = str(path)
    if pickles.is_pickle(path):
        pickles.refuse(path)
    if path.lower().endswith(".safetensors"):
        single_file.load(model, network, model_config, path)
    elif remote_files.exists(os.path.join(path, "config.json")):
        diffusers_folder.load_component(model, network, model_config, path)
    else:
        logging.info("%s: loading %s", network, path)
        load_keras_cv_h5(model, path)
