"""The dbdist configs of tests/fixtures/diffusers/ (made by tests/fixtures/make_diffusers_fixtures.py).

Each small diffusers model there has the shapes of one of these configs; the script's SMALL_UNET
(and its VAE and text encoder configs) must change together with them.
"""

import dataclasses
from pathlib import Path

import numpy as np

from dbdist.config import TextEncoderConfig, UNetConfig, model_config
from dbdist.formats import unet_keys

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DIFFUSERS_FIXTURES = FIXTURES / "diffusers"
FULL_SIZE = FIXTURES / "full_size"
KINDS = ("sd1", "sd2")

_UNETS = {
    "sd1": UNetConfig(block_channels=(8, 16, 16, 16), attention_heads=(2, 2, 2, 2), context_dim=32, norm_groups=4),
    "sd2": UNetConfig(block_channels=(8, 16, 16, 16), attention_heads=(1, 2, 2, 2), context_dim=48, norm_groups=4,
                      linear_projection=True),
}


def fixture_config(kind, faithful=True):
    """A ModelConfig whose UNet has the fixture model's shapes (16x16 latents: 128 px at the VAE's 8x), with
    tiny's VAE and a tiny text encoder as wide as the UNet's context (so an export is a consistent pipeline).
    `faithful`: the UNet computes as diffusers' (as dbdist runs imported weights), else with keras-cv's maths."""
    unet = _UNETS[kind]
    text_encoder = TextEncoderConfig(width=unet.context_dim, num_layers=2, num_heads=2)
    config = dataclasses.replace(model_config("tiny"), preset=f"fixture-{kind}", resolution=128, unet=unet,
                                 text_encoder=text_encoder)
    return unet_keys.faithful_config(config) if faithful else config


def outputs(kind):
    """{name: array} of the fixture's inputs and diffusers' outputs (NCHW, as torch)."""
    return dict(np.load(DIFFUSERS_FIXTURES / f"{kind}_outputs.npz"))


def read_key_shapes(path):
    """{key: shape} of a full-size key list (one 'key d0,d1,...' per line)."""
    shapes = {}
    for line in Path(path).read_text().splitlines():
        key, dims = line.rsplit(" ", 1)
        shapes[key] = tuple(int(d) for d in dims.split(",")) if dims else ()
    return shapes
