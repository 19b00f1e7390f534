"""Weight files: keras-cv layout checks beyond shapes, and which file a --weights folder gives each preset."""

import re
import shutil

import h5py
import numpy as np
import pytest

from dbdist.config import model_config
from dbdist.models import build_models
from dbdist.weights import sources
from dbdist.weights.keras_cv_h5 import load_keras_cv_h5, read_layers


@pytest.fixture(scope="module")
def unet_and_file(tmp_path_factory):
    """The tiny UNet and its weights written by Keras' own legacy h5 writer (keras-cv's format)."""
    from keras.src.legacy.saving import legacy_h5_format

    unet = build_models(model_config("tiny"), ("unet",), seed=0).unet
    path = tmp_path_factory.mktemp("weights") / "unet.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, unet)
    return unet, path


def _values(model):
    return [np.array(v) for v in model.weights]


def _zero(model):
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))


def test_a_genuine_keras_file_loads(unet_and_file):
    unet, path = unet_and_file
    expected = [a for layer in read_layers(path) for a in layer.arrays]
    _zero(unet)
    load_keras_cv_h5(unet, path)
    got = _values(unet)
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def _swap_layers(path, out, first, second):
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        i, j = names.index(first), names.index(second)
        names[i], names[j] = names[j], names[i]
        f.attrs["layer_names"] = [n.encode() for n in names]


def _swap_variables(path, out, layer, first, second):
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f[layer].attrs["weight_names"]]
        i, j = names.index(f"{layer}/{first}"), names.index(f"{layer}/{second}")
        names[i], names[j] = names[j], names[i]
        f[layer].attrs["weight_names"] = [n.encode() for n in names]


def _shapes(path):
    return [[a.shape for a in layer.arrays] for layer in read_layers(path)]


# Positions in the tiny UNet's layers with weights. Names are looked up, not written here:
# Keras numbers layers per process, so they depend on what other tests built first.
ATTENTION_UP_1, ATTENTION_UP_2 = 17, 19  # two attention blocks of one size, in the up path
DOWNSAMPLE, UPSAMPLE = 8, 15  # a stride-2 conv and an upsampling block: (3, 3, 64, 64) kernel + (64,) bias
OUTPUT_NORM = 25  # the output GroupNormalization: gamma and beta both (32,)


@pytest.mark.parametrize("case", ["two attention blocks", "a conv and an upsample", "gamma and beta"])
def test_a_permuted_file_whose_shapes_agree_is_refused(unet_and_file, tmp_path, case):
    unet, path = unet_and_file
    names = [layer.name for layer in read_layers(path)]
    permuted = tmp_path / "permuted.h5"
    if case == "two attention blocks":
        first, second = names[ATTENTION_UP_1], names[ATTENTION_UP_2]
        assert first.startswith("spatial_transformer") and second.startswith("spatial_transformer")
        _swap_layers(path, permuted, first, second)
        message = (rf"layer #{ATTENTION_UP_2} \('{first}' in the file, '{second}' in model 'unet'\): "
                   rf"it comes after '{second}' \(#{ATTENTION_UP_1}\), though Keras numbered it earlier")
    elif case == "a conv and an upsample":
        conv, upsample = names[DOWNSAMPLE], names[UPSAMPLE]
        assert conv.startswith("conv2d") and upsample.startswith("upsample")
        _swap_layers(path, permuted, conv, upsample)
        message = (rf"layer #{DOWNSAMPLE} \('{upsample}' in the file, '{conv}' in model 'unet'\): "
                   r"the model's earlier 'conv2d' layers matched 'conv2d' layers, this one a 'upsample'")
    else:
        norm = names[OUTPUT_NORM]
        assert norm.startswith("group_normalization")
        _swap_variables(path, permuted, norm, "gamma", "beta")
        message = (rf"layer #{OUTPUT_NORM} \('{norm}'.*its variables are \['beta', 'gamma'\]; "
                   r"the model expects \['gamma', 'beta'\]")
    assert _shapes(permuted) == _shapes(path)  # by position and shape alone it would load
    before = _values(unet)
    with pytest.raises(ValueError, match=message) as info:
        load_keras_cv_h5(unet, permuted)
    assert str(permuted) in str(info.value)
    for a, b in zip(_values(unet), before):  # nothing was assigned
        np.testing.assert_array_equal(a, b)


SD_FILES = ("kcv_diffusion_model.h5", "kcv_encoder.h5", "vae_encoder.h5", "kcv_decoder.h5",
            "diffusion_model_v2_1.h5", "text_encoder_v2_1.h5")


@pytest.mark.parametrize("preset, network, expected", [
    ("sd-v1", "unet", "kcv_diffusion_model.h5"),
    ("sd-v2", "unet", "diffusion_model_v2_1.h5"),
    ("sd-v1", "text_encoder", "kcv_encoder.h5"),
    ("sd-v2", "text_encoder", "text_encoder_v2_1.h5"),
    ("sd-v2", "vae_decoder", "kcv_decoder.h5"),  # SD 2.1 uses SD 1.x's VAE
    ("sd-v2", "vae_encoder", "vae_encoder.h5"),
])
def test_a_folder_with_both_sd_versions_gives_each_preset_its_own_file(tmp_path, preset, network, expected):
    for name in SD_FILES:  # only names are looked up: empty stand-ins will do
        (tmp_path / name).touch()
    assert sources.resolve(preset, network, str(tmp_path)) == str(tmp_path / expected)


def test_a_dbdist_export_in_the_folder_is_preferred(tmp_path):
    for name in SD_FILES + ("unet.h5",):
        (tmp_path / name).touch()
    assert sources.resolve("sd-v2", "unet", str(tmp_path)) == str(tmp_path / "unet.h5")


def test_another_presets_file_alone_is_not_taken(tmp_path):
    (tmp_path / "kcv_diffusion_model.h5").touch()
    with pytest.raises(FileNotFoundError, match=re.escape("it has kcv_diffusion_model.h5 (sd-v1's)")) as info:
        sources.resolve("sd-v2", "unet", str(tmp_path))
    assert "no sd-v2 unet weights" in str(info.value) and "diffusion_model_v2_1.h5" in str(info.value)
