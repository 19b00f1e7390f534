"""benchmarks/jax_dreambooth_step.py at tiny size on the CPU, so the GPU benchmark cannot rot.

The script is what the GPU side-by-side run (benchmarks/gpu_side_by_side.sh) times; here it runs
two rows (cached latents, and the VAE encoder inside the step) for one step each, with
`import tensorflow` made to fail (the GPU machine has no TensorFlow), and its JSON report must
hold both rows with every column the side-by-side table reads. No timing is checked.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import step_rows  # noqa: E402

ROW_COLUMNS = {"row", "batch", "vae_in_step", "gradient_checkpointing", "notes", "images_per_sec", "step_seconds",
               "mfu", "peak_memory_gib", "compile_seconds", "timed_steps", "loss", "device", "resolution",
               "tensorflow_loaded"}


@pytest.mark.slow  # two rows, each a fresh process that builds and compiles the engine's step (minutes on 2 cores)
def test_the_jax_step_benchmark_reports_its_rows(tmp_path):
    report_path = tmp_path / "jax.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "jax_dreambooth_step.py"), "--model=tiny", "--rows=2,2-vae",
         "--warmup=0", "--steps=1", "--block_tensorflow", f"--json={report_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["model"] == "tiny" and report["resolution"] == 64
    rows = report["rows"]
    assert [r["row"] for r in rows] == ["b2", "b2-vae"], rows
    for row in rows:
        assert ROW_COLUMNS <= set(row), (ROW_COLUMNS - set(row), row)
        assert row["images_per_sec"] > 0 and row["timed_steps"] == 1
        assert row["peak_memory_gib"] is None and row["mfu"] is None  # a CPU: no memory stats, no known peak
        assert row["tensorflow_loaded"] is False  # blocked, and the step ran: it needs no TensorFlow
    table = step_rows.side_by_side(report, report)  # the table the GPU run prints reads these columns
    assert "| b2 | 2 |" in table and "| b2-vae | 2 |" in table and "1.00x" in table
