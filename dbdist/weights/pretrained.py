"""Build a preset's networks and load their weights (or keep the seeded random init)."""

from absl import logging

from dbdist.models import build_models
from dbdist.weights import sources
from dbdist.weights.keras_cv_h5 import load_keras_cv_h5

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
    models = build_models(config, networks, seed=RANDOM_INIT_SEED, gradient_checkpointing=gradient_checkpointing)
    for network in networks:
        path = files.get(network) or sources.resolve(config.preset, network, weights_dir)
        model = getattr(models, network)
        if path is None:
            logging.info("%s: random initialisation from seed %d (preset %s)", network, RANDOM_INIT_SEED, config.preset)
            continue
        logging.info("%s: loading %s", network, path)
        load_keras_cv_h5(model, path)
    return models
