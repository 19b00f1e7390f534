"""Stable Diffusion networks in Keras 3 (`keras.ops` only: any backend)."""

from dbdist.models.stable_diffusion import StableDiffusionModels, build_models
from dbdist.models.text_encoder import build_text_encoder
from dbdist.models.unet import build_unet
from dbdist.models.vae import build_vae_decoder, build_vae_encoder

__all__ = [
    "StableDiffusionModels",
    "build_models",
    "build_text_encoder",
    "build_unet",
    "build_vae_decoder",
    "build_vae_encoder",
]
