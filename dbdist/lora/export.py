"""What a LoRA run exports, and how generate applies a LoRA file: engine-free, shared by both engines."""

import os

from absl import logging

from dbdist.lora.adapters import adapted_layers, adapter_weights, add_to_kernels, merge_adapters, paired_layers
from dbdist.lora.files import DIFFUSERS, KOHYA, read_lora_file, write_lora_file
from dbdist.lora.targets import TEXT_ENCODER, UNET, lora_targets
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5

DIFFUSERS_FILE, KOHYA_FILE = "lora.safetensors", "lora_kohya.safetensors"


def export_lora(export_dir, model_config, networks, merge=False):
    """Writes the adapters of `networks` ({UNET/TEXT_ENCODER: model}) in both layouts.

    With `merge`, also folds them into the networks (spending them: call last) and writes
    export/unet.h5 (and text_encoder.h5) in keras-cv's layout, as a full fine-tuning run does.
    """
    pairs = {network: adapted_layers(model, network, model_config) for network, model in networks.items()}
    weights = {}
    for network_pairs in pairs.values():
        weights.update(adapter_weights(network_pairs))
    write_lora_file(os.path.join(export_dir, DIFFUSERS_FILE), weights, DIFFUSERS)
    write_lora_file(os.path.join(export_dir, KOHYA_FILE), weights, KOHYA)
    if merge:
        for network, network_pairs in pairs.items():
            merge_adapters(network_pairs)
            save_keras_cv_h5(networks[network], os.path.join(export_dir, f"{network}.h5"))


def read_lora_for(model_config, path, networks=(UNET, TEXT_ENCODER)):
    """{Target: AdapterWeights} of a LoRA file, checked against the preset's targets (no network built yet)."""
    return read_lora_file(path, lora_targets(model_config, networks))


def apply_lora(models, weights, scale=1.0, path=""):
    """Adds `scale` x the deltas `weights` (from read_lora_for) to the kernels of `models`.

    Returns the networks it adapted.
    """
    adapted = sorted({target.network for target in weights})
    for network in adapted:
        add_to_kernels(paired_layers(getattr(models, network), network, models.config), weights, scale)
    ranks = sorted({w.rank for w in weights.values()})
    logging.info("LoRA %s: %d projections of the %s, rank %s, scale %g", path, len(weights), " and ".join(adapted),
                 "/".join(map(str, ranks)), scale)
    return adapted
