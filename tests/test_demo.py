"""`make demo` end to end: python -m dbdist.demo, shortened by its own flags, and what it leaves behind."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from distributed_runs import REPO
from PIL import Image

TRAIN_STEPS = 2


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG", path
        return np.asarray(image.convert("RGB"))


@pytest.mark.slow  # three fresh processes (make_tfrecords, train, generate): over a minute on 2 cores
def test_demo_trains_and_draws_samples(tmp_path, vocab_path):
    out = tmp_path / "demo_out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "dbdist.demo", f"--output_dir={out}", f"--vocab_path={vocab_path}",
         f"--demo_train_steps={TRAIN_STEPS}", "--demo_sampling_steps=2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == TRAIN_STEPS
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert (out / "run" / "export" / "unet.h5").stat().st_size > 0

    # A 7 x 4 inch figure at 100 dpi, cropped to its content (the width follows the tick labels).
    curve = _png(out / "run" / "loss_curve.png")
    assert 350 <= curve.shape[0] <= 400 and 550 <= curve.shape[1] <= 700, curve.shape
    assert len(np.unique(curve.reshape(-1, 3), axis=0)) > 10  # lines and text, not a blank canvas

    # 4 samples of the tiny preset's 64 px, tiled 2 x 2.
    samples = [_png(out / "samples" / f"image_{i:03d}.png") for i in range(4)]
    assert [s.shape for s in samples] == [(64, 64, 3)] * 4
    grid = _png(out / "samples" / "grid.png")
    assert grid.shape == (128, 128, 3)
    np.testing.assert_array_equal(grid[:64, 64:], samples[1])
    assert grid.std() > 1.0  # drawn images, not a constant fill
