"""Run dbdist's absl commands in the test process (no TensorFlow start-up per call)."""

import keras
from absl import flags

from dbdist import generate, make_tfrecords, train

COMMANDS = {"make_tfrecords": make_tfrecords, "train": train, "generate": generate}


def run_command(name, **flag_values):
    """Parses `--key=value` flags as the command line would and runs the command's main."""
    flag_registry = flags.FLAGS
    flag_registry.unparse_flags()
    flag_registry(["dbdist." + name] + [f"--{key}={value}" for key, value in flag_values.items()])
    try:
        COMMANDS[name].main([])
    finally:
        flag_registry.unparse_flags()
        keras.mixed_precision.set_dtype_policy("float32")  # train may have changed it
