"""Build a preset's networks and load their weights (or keep the seeded random init)."""

from absl import logging

from dbdist.errors import UserError
from dbdist.formats import detect
from dbdist.formats.networks import faithful_config
from dbdist.models import build_models
from dbdist.weights import sources

# `tiny`'s weights are one fixed random draw, as if it were a published checkpoint. Not --seed:
# make_tfrecords, train and generate run with different --seed values (data order, noise,
# sampling) must still build the same text encoder and VAE, or the embeddings and latents
# stored in the records would belong to other networks than the ones that sample.
RANDOM_INIT_SEED = 0


def load_networks(config, networks, weights_dir="", files=None, gradient_checkpointing=False):
    """StableDiffusionModels with `networks` built and loaded.

    Order: an explicit file in `files` ({network: path}), else `weights_dir`,
    else keras-cv's published file; `tiny` without either keeps its fixed random
    initialisation (RANDOM_INIT_SEED). `gradient_checkpointing`: see build_unet.
    """
    files = files or {}
    found = detect.weights_format(weights_dir) if weights_dir else None
    if found in (detect.DIFFUSERS, detect.SINGLE_FILE):
        # Weights from SD's own tools run with their maths (exact GELU, their norm epsilons), not keras-cv's.
        config = faithful_config(config)
    models = build_models(config, networks, seed=RANDOM_INIT_SEED, gradient_checkpointing=gradient_checkpointing)
    for network in networks:
        model = getattr(models, network)
        if not files.get(network) and found in (detect.DIFFUSERS, detect.SINGLE_FILE):
            detect.load_from_weights(model, network, config, weights_dir, found)
            continue
        path = files.get(network) or sources.resolve(config.preset, network, weights_dir)
        if path is None:
            logging.info("%s: random initialisation from seed %d (preset %s)", network, RANDOM_INIT_SEED, config.preset)
            continue
        try:
            detect.load_file(model, network, config, path)  # .h5, or a .safetensors / diffusers unet/ for --unet_weights
        except ValueError as err:  # another preset's file (shapes or layer count differ), or not weights at all
            raise UserError(f"--model={config.preset} expects {config.preset}'s {network} weights "
                            f"({model.count_params():,} parameters); {err}") from err
    return models
