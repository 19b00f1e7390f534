"""A `dbdist.train` output dir as the commands that draw from it read it (generate, evaluate)."""

import dataclasses
import json
import os

import tensorflow as tf

from dbdist.config import LEGACY_PAD_TOKEN_ID, model_config, with_resolution
from dbdist.errors import MissingInputError


def read_config(run_dir):
    """The run's config.json, as a dict."""
    path = os.path.join(run_dir, "config.json")
    if not tf.io.gfile.exists(path):
        raise MissingInputError(f"--run_dir {run_dir} has no config.json; expected a dbdist.train output dir")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def trained_model_config(run, resolution=0):
    """The ModelConfig the run trained: its preset at its resolution (or `resolution`), with its
    prompt padding and prediction type, so images are drawn as the run was trained."""
    model = model_config(run["model"]["preset"])
    model = with_resolution(model, resolution or run["model"].get("resolution") or model.resolution)
    # A run from before pad ids were per preset padded with the end token.
    pad = run["model"].get("text_encoder", {}).get("pad_token_id", LEGACY_PAD_TOKEN_ID)
    # A run from an imported v-prediction model recorded it (older runs: epsilon).
    prediction_type = run["model"].get("schedule", {}).get("prediction_type", "epsilon")
    return dataclasses.replace(
        model,
        text_encoder=dataclasses.replace(model.text_encoder, pad_token_id=pad),
        schedule=dataclasses.replace(model.schedule, prediction_type=prediction_type))


def exported_files(run_dir):
    """{network: file} of the run's export/: "unet" (absent if training did not export one) and
    "text_encoder" when it was trained (--train_text_encoder or --train_token_embeddings)."""
    files = {}
    for network in ("unet", "text_encoder"):
        path = os.path.join(run_dir, "export", f"{network}.h5")
        if tf.io.gfile.exists(path):
            files[network] = path
    return files
