"""`--help` of each command lists the shared flags it reads (dbdist/common_flags.py), not only its own.

absl's --help shows the main module's key flags: flags defined elsewhere appear only if the
command declares them.
"""

import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from dbdist import demo, evaluate, generate, make_tfrecords, train
from tfrecords_tools import inspect as records_inspect
from tfrecords_tools import preview as records_preview
from tfrecords_tools import verify as records_verify

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL_FLAGS = {"model", "resolution", "weights", "vocab_path", "output_dir", "seed"}
STRATEGY_FLAGS = {"strategy", "num_cpu_devices", "tpu"}
SAMPLING_FLAGS = {"run_dir", "num_images", "num_steps", "guidance_scale", "negative_prompt"}  # dbdist/sampling_flags.py
# Each command and the shared flags it reads.
SHARED_FLAGS = [
    (train, MODEL_FLAGS | STRATEGY_FLAGS | {"data_dir", "unet_weights", "random_flip"}),
    (make_tfrecords, MODEL_FLAGS | STRATEGY_FLAGS | {"random_flip", "instance_dir"}),
    (generate, MODEL_FLAGS | {"unet_weights"} | SAMPLING_FLAGS),
    (evaluate, {"model", "weights", "vocab_path", "output_dir", "seed", "instance_dir"} | SAMPLING_FLAGS),
    (demo, {"output_dir", "vocab_path", "weights"}),
    (records_inspect, {"data_dir"}),
    (records_verify, {"data_dir"}),
    (records_preview, {"data_dir", "weights", "seed"}),
]
COMMAND_NAMES = [command.__name__ for command, _ in SHARED_FLAGS]


@pytest.mark.parametrize("command, shared", SHARED_FLAGS, ids=COMMAND_NAMES)
def test_help_lists_the_shared_flags_each_command_reads(command, shared):
    listed = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(command)}
    assert shared <= listed, f"{command.__name__} --help leaves out {sorted(shared - listed)}"


def test_help_as_users_see_it():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dbdist.generate", "--help"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    for flag in ("--prompt", "--num_steps", "--vocab_path", "--weights", "--seed", "--output_dir"):
        assert f"  {flag}:" in result.stdout, result.stdout
