"""Weights that cannot be this model's are refused before anything trains, naming the file and what was expected."""

import functools

import numpy as np
import pytest
from formats_fixtures import DIFFUSERS_FIXTURES, fixture_config

from dbdist.config import model_config
from dbdist.errors import UserError
from dbdist.formats import detect, safetensors_io, single_file
from dbdist.models.unet import build_unet
from dbdist.weights.pretrained import load_networks


@functools.cache
def _sd1_unet():
    return build_unet(fixture_config("sd1").unet)


def test_pickles_are_refused_saying_why(tmp_path):
    for name in ("model.ckpt", "unet.bin", "weights.pt"):
        (tmp_path / name).write_bytes(b"\x80\x04 not opened")
        with pytest.raises(UserError, match=rf"{name}.*executes.*\.safetensors"):
            load_networks(model_config("tiny"), ("unet",), weights_dir=str(tmp_path / name))
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match=r"diffusion_pytorch_model\.bin.*executes"):
        load_networks(model_config("tiny"), ("unet",), weights_dir=str(folder))


def test_a_folder_of_neither_kind_names_what_each_would_hold(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"unet\.h5.*model_index\.json"):
        load_networks(model_config("tiny"), ("unet",), weights_dir=str(tmp_path))
    assert detect.weights_format(str(tmp_path)) == detect.KERAS_CV


def test_a_safetensors_of_no_known_layout_names_a_missing_key(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors_io.write({"encoder.weight": np.zeros((2, 2), np.float32)}, str(path))
    unet = _sd1_unet()
    before = [np.array(v.numpy()) for v in unet.weights]
    with pytest.raises(UserError, match=r"other\.safetensors: has no tensor 'model\.diffusion_model\.time_embed\.0\.weight'"):
        single_file.load(unet, "unet", fixture_config("sd1"), str(path))
    assert all(np.array_equal(a, np.array(v.numpy())) for a, v in zip(before, unet.weights))  # left as it was


def test_a_checkpoint_of_another_sd_version_names_the_first_mismatched_shape():
    # The SD 2.x-kind fixture into the SD 1.x-kind model: the first tensor that differs, in the model's order, is
    # the first transformer's proj_in (SD 2.x projects with a Linear, SD 1.x with a 1x1 convolution).
    with pytest.raises(UserError, match=r"sd2\.safetensors: tensor 'model\.diffusion_model\.input_blocks\.1\.1\.proj_in"
                                        r"\.weight' has shape \(8, 8\), but .* expects \(8, 8, 1, 1\); .*another Stable "
                                        r"Diffusion version"):
        single_file.load(_sd1_unet(), "unet", fixture_config("sd1"), str(DIFFUSERS_FIXTURES / "sd2.safetensors"))
