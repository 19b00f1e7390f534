"""Which networks made a data directory's text embeddings and cached latents.

Records store text embeddings (and, with --cache_latents, VAE posteriors) made
by one text encoder (and VAE encoder). They are only valid with those networks:
training conditions the UNet on the stored embeddings, and generate later
encodes prompts with the text encoder, and decodes latents with the VAE decoder,
of the run's weights. So make_tfrecords records a fingerprint of the encoding
networks in the manifest, and train refuses records whose fingerprints differ
from those of the networks its own weights source provides.

A fingerprint is the SHA-256 of the weights as loaded (each variable's shape and
float32 bytes, in the model's order): it tells a --weights folder, keras-cv's
published files and tiny's random initialisation apart alike, whatever the file
is called or where it lives.
"""

import hashlib

import numpy as np

from dbdist.errors import MissingInputError, UserError
from dbdist.weights.pretrained import load_networks

TEXT_ENCODER, VAE_ENCODER = "text_encoder", "vae_encoder"


def weights_fingerprint(model):
    """'sha256:<hex>' over the shapes and float32 values of `model`'s weights, in order."""
    digest = hashlib.sha256()
    for variable in model.weights:
        array = np.ascontiguousarray(np.asarray(variable), dtype="<f4")
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return f"sha256:{digest.hexdigest()}"


def encoding_networks(cache_latents):
    """The networks whose outputs a record set stores."""
    return (TEXT_ENCODER, VAE_ENCODER) if cache_latents else (TEXT_ENCODER,)


def fingerprints_of(models, networks):
    """{network: fingerprint} of already-built networks."""
    return {name: weights_fingerprint(getattr(models, name)) for name in networks}


def load_fingerprints(config, networks, weights_dir):
    """{network: fingerprint} of the networks `weights_dir` (or the preset's default) provides.

    Loads them outside any strategy scope just to hash them; they are dropped afterwards.
    """
    try:
        models = load_networks(config, tuple(networks), weights_dir)
    except FileNotFoundError as err:
        raise MissingInputError(f"{err}; it is needed to check that the records were encoded by "
                                f"the networks of this run's weights") from err
    return fingerprints_of(models, networks)


def check_same_encoders(recorded, current, *, data_dir, recorded_weights, current_weights):
    """Raises UserError naming both fingerprints if any network in `recorded` differs in `current`."""
    describe = lambda weights: f"--weights={weights}" if weights else "the preset's default weights"
    for name, fingerprint in sorted(recorded.items()):
        if current.get(name) != fingerprint:
            raise UserError(
                f"{data_dir} was encoded by a {name} with weights {fingerprint[:19]}... "
                f"({describe(recorded_weights)}), but this run's {name} is {str(current.get(name))[:19]}... "
                f"({describe(current_weights)}); its stored outputs would not match the networks that sample "
                f"from the trained model. Pass the --weights the records were made with, or remake them: "
                f"python -m dbdist.make_tfrecords --weights={current_weights} ...")
