"""Where each network's weights come from: a `--weights` directory or keras-cv's published files.

A `--weights` directory (local or gs://) holds keras-cv layout `.h5` files,
named as keras-cv publishes them or as dbdist exports them; the first name
found wins. Without `--weights`, `sd-v1`/`sd-v2` fetch keras-cv's published
files, checked against their SHA-256, into Keras' cache, exactly as keras-cv
does. `tiny` has no published weights: it is random-initialised from a seed.
"""

import os

from dbdist.weights import remote_files

# (url, sha256) of the files keras-cv 0.9.0 downloads. SD 2.1 reuses SD 1.x's VAE.
_HF = "https://huggingface.co"
_V1_VAE = {
    "vae_encoder": (
        f"{_HF}/fchollet/stable-diffusion/resolve/main/vae_encoder.h5",
        "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb",
    ),
    "vae_decoder": (
        f"{_HF}/fchollet/stable-diffusion/resolve/main/kcv_decoder.h5",
        "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962",
    ),
}
PUBLISHED = {
    "sd-v1": {
        "unet": (
            f"{_HF}/fchollet/stable-diffusion/resolve/main/kcv_diffusion_model.h5",
            "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe",
        ),
        "text_encoder": (
            f"{_HF}/fchollet/stable-diffusion/resolve/main/kcv_encoder.h5",
            "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4",
        ),
        **_V1_VAE,
    },
    "sd-v2": {
        "unet": (
            f"{_HF}/ianstenbit/keras-sd2.1/resolve/main/diffusion_model_v2_1.h5",
            "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d",
        ),
        "text_encoder": (
            f"{_HF}/ianstenbit/keras-sd2.1/resolve/main/text_encoder_v2_1.h5",
            "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b",
        ),
        **_V1_VAE,
    },
}

# File names accepted in a --weights directory, in order of preference.
FILE_NAMES = {
    "unet": ("unet.h5", "diffusion_model.h5", "kcv_diffusion_model.h5", "diffusion_model_v2_1.h5"),
    "text_encoder": ("text_encoder.h5", "kcv_encoder.h5", "text_encoder_v2_1.h5"),
    "vae_encoder": ("vae_encoder.h5", "image_encoder.h5"),
    "vae_decoder": ("vae_decoder.h5", "decoder.h5", "kcv_decoder.h5"),
}


def find_in_directory(weights_dir, network):
    """Path of `network`'s file in `weights_dir`; FileNotFoundError naming what was expected."""
    if not remote_files.exists(weights_dir):
        raise FileNotFoundError(f"--weights directory {weights_dir} does not exist")
    for name in FILE_NAMES[network]:
        path = os.path.join(weights_dir, name)
        if remote_files.exists(path):
            return path
    raise FileNotFoundError(
        f"--weights directory {weights_dir} has no {network} weights; expected one of {', '.join(FILE_NAMES[network])}"
    )


def download_published(preset, network):
    """keras-cv's published file for (preset, network), fetched once and hash-checked."""
    import keras

    if preset not in PUBLISHED:
        raise ValueError(
            f"preset {preset!r} has no published weights; pass --weights=DIR with keras-cv layout .h5 files"
        )
    url, sha256 = PUBLISHED[preset][network]
    return keras.utils.get_file(origin=url, file_hash=sha256)


def resolve(preset, network, weights_dir=""):
    """Path of the weights to load for `network`, or None for random initialisation (tiny)."""
    if weights_dir:
        return find_in_directory(weights_dir, network)
    if preset in PUBLISHED:
        return download_published(preset, network)
    return None
