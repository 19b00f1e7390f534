"""The UNet through diffusers' formats, checked against diffusers' own code (tests/fixtures, no torch here).

The fixtures are small random UNets of the SD 1.x and SD 2.x kinds built and run by diffusers
(tests/fixtures/make_diffusers_fixtures.py), saved as diffusers folders and as original-layout
single files, with their outputs on fixed inputs.
"""

import functools

import numpy as np
import pytest
from formats_fixtures import DIFFUSERS_FIXTURES, FULL_SIZE, KINDS, fixture_config, outputs, read_key_shapes

from dbdist.config import model_config
from dbdist.diffusion import timestep_embedding
from dbdist.formats import diffusers_folder, networks, safetensors_io, single_file
from dbdist.models.unet import build_unet


@functools.cache
def _unet(kind):
    """One UNet per kind for the whole module (building takes most of a test's time); tests zero it first."""
    return build_unet(fixture_config(kind).unet)


def _predict(unet, config, data):
    """Our UNet on the fixture's inputs, NCHW like diffusers' output."""
    latent = data["unet_sample"].transpose(0, 2, 3, 1)
    t_emb = np.asarray(timestep_embedding(data["unet_timesteps"], config.unet.time_embedding_dim))
    out = unet([latent, t_emb, data["unet_context"]], training=False)
    return np.asarray(out).transpose(0, 3, 1, 2)


def _values(model):
    return [np.array(v.numpy()) for v in model.weights]


def _zero(model):
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))


# Measured max |ours - diffusers| (outputs up to ~3), the same from the folder and the single file, with the
# UNet computing as diffusers does (faithful_config, as dbdist runs imported weights): sd1 1.8e-6, sd2 2.7e-6,
# float32 round-off; tolerance 2e-5. (With keras-cv's maths, the presets' tanh GELU and GroupNorm epsilon 1e-5,
# it is 4.3e-4 and 8.2e-4.) A misplaced tensor moves outputs by O(0.1-1).
TOLERANCE = 2e-5


@pytest.mark.parametrize("kind", KINDS)
def test_import_gives_diffusers_outputs(kind):
    config, data, unet = fixture_config(kind), outputs(kind), _unet(kind)
    for load, source in ((diffusers_folder.load, DIFFUSERS_FIXTURES / kind),
                         (single_file.load, DIFFUSERS_FIXTURES / f"{kind}.safetensors")):
        _zero(unet)
        load(unet, "unet", config, str(source))
        error = np.abs(_predict(unet, config, data) - data["unet_output"]).max()
        assert error < TOLERANCE, f"{source}: max |dbdist - diffusers| = {error}"


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_is_bit_identical_and_has_the_fixture_keys(kind, tmp_path):
    """import(export(x)) == x bit for bit, in both layouts; fp16 too, since the fixture's weights are fp16
    values. The exported keys and shapes are exactly those of diffusers' own files."""
    config = fixture_config(kind)
    unet = _unet(kind)
    _zero(unet)
    single_file.load(unet, "unet", config, str(DIFFUSERS_FIXTURES / f"{kind}.safetensors"))
    x = _values(unet)
    files = {"diffusers": DIFFUSERS_FIXTURES / kind / "unet" / "diffusion_pytorch_model.safetensors",
             "original": DIFFUSERS_FIXTURES / f"{kind}.safetensors"}
    for layout, fixture_file in files.items():
        header = safetensors_io.read_header(fixture_file)
        if layout == "original":
            header = {k: v for k, v in header.items() if k.startswith("model.diffusion_model.")}
        for dtype in (np.float32, np.float16):
            tensors = networks.file_tensors(unet, "unet", config, layout, dtype)
            assert {k: v.shape for k, v in tensors.items()} == {k: shape for k, (_, shape) in header.items()}
            path = tmp_path / f"{layout}-{np.dtype(dtype).name}.safetensors"
            safetensors_io.write(tensors, str(path))
            _zero(unet)
            single_file.load(unet, "unet", config, str(path))
            for a, b in zip(x, _values(unet), strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("preset, version", [("sd-v1", "sd15"), ("sd-v2", "sd21")])
def test_full_size_export_has_diffusers_key_names_and_shapes(preset, version):
    """The key names and shapes our export writes for the full-size UNet are diffusers' SD 1.5 / 2.1 ones."""
    config = model_config(preset)
    unet = build_unet(config.unet)
    for layout, prefix in (("diffusers", "unet/"), ("original", "model.diffusion_model.")):
        expected = {k: v for k, v in read_key_shapes(FULL_SIZE / f"{version}_{layout}.txt").items() if k.startswith(prefix)}
        ours = {(f"unet/{k.key}" if layout == "diffusers" else k.key): k.shape
                for k in networks.key_map("unet", unet, config, layout)}
        assert ours == expected
