"""The encoder fixtures (tests/fixtures/encoders/) as dbdist networks: their configs, import and export.

The small models of tests/fixtures/diffusers_encoder_fixtures.py, in dbdist's configs, loaded and
written through the key maps (dbdist/formats/vae_keys.py, text_encoder_keys.py).

Also the script the fixture script runs for the reverse direction, with dbdist's Python:
    python tests/encoder_formats.py FIXTURES_DIR EXPORT_DIR
imports every fixture and writes it back out in both layouts, as dbdist exports them.
"""

import dataclasses
import json
import os
import sys

import keras
import numpy as np
from safetensors.numpy import load_file, save_file

from dbdist.config import TextEncoderConfig, VAEConfig, model_config
from dbdist.formats import tensor_map, text_encoder_keys, vae_keys
from dbdist.models import build_text_encoder, build_vae_decoder, build_vae_encoder

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "encoders")
KINDS = ("sd1", "sd2")
LAYOUTS = ("diffusers", "original")

# diffusers_encoder_fixtures.SMALL_VAE / SMALL_TEXT in dbdist's terms.
SMALL_VAE = VAEConfig(block_channels=(8, 16, 16, 16), layers_per_block=2, norm_groups=4, scaling_factor=0.18215)
SMALL_TEXT = {
    "sd1": TextEncoderConfig(vocab_size=1000, width=32, num_layers=2, num_heads=2, activation="quick_gelu"),
    "sd2": TextEncoderConfig(vocab_size=1000, width=48, num_layers=3, num_heads=3, activation="gelu"),
}


def load_into(tensor_keys, tensors, source):
    """Assigns every variable of `tensor_keys` from `tensors` ({key: array}); ValueError naming a missing key.

    What dbdist.formats.networks.load_tensors does for a named network, without its user-facing messages.
    """
    missing = [k.key for k in tensor_keys if k.key not in tensors]
    if missing:
        raise ValueError(f"{source}: no tensor {missing[0]!r}")
    for k in tensor_keys:
        if tuple(tensors[k.key].shape) != tuple(k.shape):
            raise ValueError(f"{source}: {k.key!r} has shape {tuple(tensors[k.key].shape)}, expected {tuple(k.shape)}")
    for k in tensor_keys:
        k.variable.assign(k.to_keras(np.asarray(tensors[k.key])).astype(k.variable.dtype))


def tensors_of(tensor_keys):
    """{key: array} of the variables of `tensor_keys` in the file's layout, q/k/v parts stacked."""
    return tensor_map.file_tensors(tensor_keys, [keras.ops.convert_to_numpy(k.variable) for k in tensor_keys])


def small_config(kind="sd1", faithful=True):
    """The fixtures' config; `faithful`: computing as diffusers does (VAE epsilon 1e-6, exact GELU),
    else with keras-cv's settings, as dbdist's presets."""
    config = dataclasses.replace(model_config("tiny"), vae=SMALL_VAE, text_encoder=SMALL_TEXT[kind])
    return text_encoder_keys.faithful_config(vae_keys.faithful_config(config)) if faithful else config


def vae_file(layout, root=FIXTURES):
    return os.path.join(root, "vae", "diffusion_pytorch_model.safetensors") if layout == "diffusers" else \
        os.path.join(root, "vae_original.safetensors")


def text_file(kind, layout, root=FIXTURES):
    return os.path.join(root, f"text_encoder_{kind}", "model.safetensors") if layout == "diffusers" else \
        os.path.join(root, f"text_encoder_{kind}_original.safetensors")


def build_small(faithful=True):
    """{"vae": (encoder, decoder), "sd1": text encoder, "sd2": text encoder} of the fixtures' configs, random."""
    vae = small_config(faithful=faithful).vae
    networks = {"vae": (build_vae_encoder(vae), build_vae_decoder(vae))}
    for kind in KINDS:
        networks[kind] = build_text_encoder(small_config(kind, faithful).text_encoder)
    return networks


def load_vae(encoder, decoder, layout, root=FIXTURES, faithful=True):
    """Loads the fixture VAE of `layout` into an encoder and decoder of the small config."""
    config = small_config(faithful=faithful)
    path = vae_file(layout, root)
    tensors = vae_keys.canonical_tensors(load_file(path), layout)
    load_into(vae_keys.encoder_key_map(encoder, config, layout), tensors, path)
    load_into(vae_keys.decoder_key_map(decoder, config, layout), tensors, path)
    return encoder, decoder


def load_text_encoder(model, kind, layout, root=FIXTURES, faithful=True):
    config = small_config(kind, faithful)
    path = text_file(kind, layout, root)
    tensors = text_encoder_keys.canonical_tensors(load_file(path), layout)
    load_into(text_encoder_keys.key_map(model, config, layout), tensors, path)
    return model


def _write(tensors, path, config=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path)
    if config is not None:
        with open(os.path.join(os.path.dirname(path), "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def export_all(root, out):
    """Imports each fixture (from its diffusers folder) and writes it in both layouts under `out`."""
    config = small_config()
    networks = build_small()
    encoder, decoder = load_vae(*networks["vae"], "diffusers", root)
    for layout in LAYOUTS:
        keys = vae_keys.encoder_key_map(encoder, config, layout) + vae_keys.decoder_key_map(decoder, config, layout)
        _write(tensors_of(keys), vae_file(layout, out),
               vae_keys.diffusers_config(config) if layout == "diffusers" else None)
    for kind in KINDS:
        config = small_config(kind)
        model = load_text_encoder(networks[kind], kind, "diffusers", root)
        for layout in LAYOUTS:
            _write(tensors_of(text_encoder_keys.key_map(model, config, layout)), text_file(kind, layout, out),
                   text_encoder_keys.diffusers_config(config) if layout == "diffusers" else None)


if __name__ == "__main__":
    export_all(sys.argv[1], sys.argv[2])
