"""Build a preset's networks and load their weights (or keep the seeded random init)."""

from absl import logging

from dbdist.models import build_models
from dbdist.weights import sources
from dbdist.weights.keras_cv_h5 import load_keras_cv_h5


def load_networks(config, networks, weights_dir="", seed=0, files=None):
    """StableDiffusionModels with `networks` built and loaded.

    Order: an explicit file in `files` ({network: path}), else `weights_dir`,
    else keras-cv's published file; `tiny` without either stays at the random
    initialisation drawn from `seed`.
    """
    files = files or {}
    models = build_models(config, networks, seed=seed)
    for network in networks:
        path = files.get(network) or sources.resolve(config.preset, network, weights_dir)
        model = getattr(models, network)
        if path is None:
            logging.info("%s: random initialisation from seed %d (preset %s)", network, seed, config.preset)
            continue
        logging.info("%s: loading %s", network, path)
        load_keras_cv_h5(model, path)
    return models
