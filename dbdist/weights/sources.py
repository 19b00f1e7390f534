"""Where each network's weights come from: a `--weights` directory or keras-cv's published files.

A `--weights` directory (local or gs://) holds keras-cv layout `.h5` files,
named as dbdist exports them or as keras-cv publishes them; the first name
found wins, and another preset's published file never does (one folder may
hold both SD 1.x's and SD 2.x's). Without `--weights`, `sd-v1`/`sd-v2` fetch
keras-cv's published files, checked against their SHA-256, into Keras' cache,
exactly as keras-cv does; `toy` loads the files shipped inside the package
(dbdist/toy/weights/, made by `python -m dbdist.toy.pretrain`). `tiny` has no
published weights: it is random-initialised from a seed.
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

# Names any preset's file may have: dbdist's exports first (a user who put one there meant
# it), then keras-cv's class names. Each preset's published names come between them.
_DBDIST_NAMES = {"unet": "unet.h5", "text_encoder": "text_encoder.h5",
                 "vae_encoder": "vae_encoder.h5", "vae_decoder": "vae_decoder.h5"}
_KERAS_CV_CLASS_NAMES = {"unet": ("diffusion_model.h5",), "text_encoder": (),
                         "vae_encoder": ("image_encoder.h5",), "vae_decoder": ("decoder.h5",)}


def _published_name(preset, network):
    return os.path.basename(PUBLISHED[preset][network][0]) if preset in PUBLISHED else None


def file_names(preset, network):
    """Names accepted in a --weights directory for (preset, network), in order of preference."""
    names = [_DBDIST_NAMES[network], _published_name(preset, network), *_KERAS_CV_CLASS_NAMES[network]]
    return tuple(dict.fromkeys(n for n in names if n))


def _other_presets_files(weights_dir, preset, network):
    """'kcv_diffusion_model.h5 (sd-v1's)', ... for other presets' published files in the folder."""
    mine = set(file_names(preset, network))
    found = []
    for other in PUBLISHED:
        name = _published_name(other, network)
        if other != preset and name not in mine and remote_files.exists(os.path.join(weights_dir, name)):
            found.append(f"{name} ({other}'s)")
    return found


def find_in_directory(weights_dir, network, preset):
    """Path of `network`'s file for `preset` in `weights_dir`; FileNotFoundError naming what was expected."""
    if not remote_files.exists(weights_dir):
        raise FileNotFoundError(f"--weights directory {weights_dir} does not exist")
    names = file_names(preset, network)
    for name in names:
        path = os.path.join(weights_dir, name)
        if remote_files.exists(path):
            return path
    others = _other_presets_files(weights_dir, preset, network)
    raise FileNotFoundError(
        f"--weights directory {weights_dir} has no {preset} {network} weights; expected one of {', '.join(names)}"
        + (f"; it has {', '.join(others)}" if others else "")
        + "; nor is it a diffusers folder (no model_index.json) or a .safetensors file"
    )


# Presets whose weights ship inside the package: {preset: folder of dbdist-named .h5 files}.
PACKAGED = {"toy": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy", "weights")}


def packaged_file(preset, network):
    """The shipped file of (preset, network); MissingInputError saying how to make it."""
    path = os.path.join(PACKAGED[preset], _DBDIST_NAMES[network])
    if not os.path.exists(path):
        from dbdist.errors import MissingInputError

        raise MissingInputError(f"{path} is missing: {preset}'s weights ship with dbdist; make them with "
                                f"`python -m dbdist.toy.pretrain --output_dir=DIR` or pass --weights=DIR")
    return path


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
        return find_in_directory(weights_dir, network, preset)
    if preset in PUBLISHED:
        return download_published(preset, network)
    if preset in PACKAGED:
        return packaged_file(preset, network)
    return None
