"""The model code is backend-agnostic: the tiny networks give the same outputs under JAX as under TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dbdist.config import model_config
from dbdist.diffusion import timestep_embedding
from dbdist.models import build_models
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5

REPO = pathlib.Path(__file__).resolve().parents[1]

_JAX_SCRIPT = """
import json, sys
import numpy as np
import pytest
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from dbdist.config import model_config
from dbdist.models import build_models
from dbdist.diffusion import timestep_embedding
from dbdist.weights.keras_cv_h5 import load_keras_cv_h5
# Checked before building: keras.utils.set_random_seed itself imports TensorFlow when installed.
tensorflow_imported = "tensorflow" in sys.modules
work = sys.argv[1]
inputs = np.load(f"{work}/inputs.npz")
models = build_models(model_config("tiny"), ("unet", "text_encoder"), seed=123)  # other weights: overwritten
load_keras_cv_h5(models.unet, f"{work}/unet.h5")
load_keras_cv_h5(models.text_encoder, f"{work}/text_encoder.h5")
t_emb = np.asarray(timestep_embedding(inputs["t"], 32))
unet = models.unet([inputs["latent"], t_emb, inputs["context"]])
text = models.text_encoder(inputs["tokens"])
np.savez(f"{work}/jax.npz", unet=np.asarray(unet), text=np.asarray(text))
print(json.dumps({"tensorflow_imported": tensorflow_imported}))
"""


@pytest.mark.slow  # only in make test-all: a fresh process under the JAX backend
def test_tiny_models_match_under_jax(tmp_path):
    models = build_models(model_config("tiny"), ("unet", "text_encoder"), seed=0)
    save_keras_cv_h5(models.unet, tmp_path / "unet.h5")
    save_keras_cv_h5(models.text_encoder, tmp_path / "text_encoder.h5")
    rng = np.random.default_rng(0)
    inputs = {
        "latent": rng.normal(size=(2, 8, 8, 4)).astype("float32"),
        "t": np.array([10, 900]),
        "context": rng.normal(size=(2, 77, 32)).astype("float32"),
        "tokens": rng.integers(0, 49408, size=(2, 77)).astype("int32"),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    t_emb = np.asarray(timestep_embedding(inputs["t"], 32))
    expected_unet = np.asarray(models.unet([inputs["latent"], t_emb, inputs["context"]]))
    expected_text = np.asarray(models.text_encoder(inputs["tokens"]))

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"tensorflow_imported": False}, "model code imported TensorFlow under the JAX backend"
    got = np.load(tmp_path / "jax.npz")
    # fp32 on two backends' CPU kernels (XLA vs TF): round-off only.
    np.testing.assert_allclose(got["unet"], expected_unet, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["text"], expected_text, atol=1e-5, rtol=1e-5)
    assert np.abs(expected_unet).max() > 0.1  # a real signal was compared


def test_model_code_never_imports_tensorflow():
    for folder in ("models", "diffusion"):
        for path in (REPO / "dbdist" / folder).glob("*.py"):
            text = path.read_text()
            assert "import tensorflow" not in text and "from tensorflow" not in text, path
