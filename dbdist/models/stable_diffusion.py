"""The four networks of one model preset, built together."""

import dataclasses

import keras

from dbdist.config import ModelConfig
from dbdist.models.text_encoder import build_text_encoder
from dbdist.models.unet import build_unet
from dbdist.models.vae import build_vae_decoder, build_vae_encoder


@dataclasses.dataclass
class StableDiffusionModels:
    """Built (weights created) networks. Any may be None when a job has no use for it."""

    config: ModelConfig
    unet: keras.Model = None
    vae_encoder: keras.Model = None
    vae_decoder: keras.Model = None
    text_encoder: keras.Model = None


NETWORKS = ("unet", "vae_encoder", "vae_decoder", "text_encoder")


def build_models(config: ModelConfig, networks=NETWORKS, seed=0, gradient_checkpointing=False):
    """Builds the named networks with random weights drawn from `seed`.

    Each network draws from its own seed, so the text encoder that
    make_tfrecords builds is the same as the one generate builds, whichever
    other networks each job asks for (the `tiny` preset uses these weights;
    real presets load theirs over them). `gradient_checkpointing` rematerialises the
    UNet's blocks in the backward pass (see build_unet).
    """
    unknown = set(networks) - set(NETWORKS)
    if unknown:
        raise ValueError(f"unknown networks {sorted(unknown)}; expected some of {NETWORKS}")
    builders = {
        "unet": lambda: build_unet(config.unet, gradient_checkpointing=gradient_checkpointing),
        "vae_encoder": lambda: build_vae_encoder(config.vae),
        "vae_decoder": lambda: build_vae_decoder(config.vae),
        "text_encoder": lambda: build_text_encoder(config.text_encoder),
    }
    built = {}
    for offset, name in enumerate(NETWORKS):
        if name in networks:
            keras.utils.set_random_seed(seed * len(NETWORKS) + offset)
            built[name] = builders[name]()
    return StableDiffusionModels(config, **built)
