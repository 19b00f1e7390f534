"""Run dbdist's absl commands in the test process (no TensorFlow start-up per call)."""

import keras
from absl import flags

from dbdist import evaluate, generate, make_tfrecords, train
from tfrecords_tools import inspect as records_inspect
from tfrecords_tools import preview as records_preview
from tfrecords_tools import verify as records_verify

# dbdist.<name> commands by their short name, the tools by their module name.
COMMANDS = {
    "make_tfrecords": make_tfrecords,
    "train": train,
    "generate": generate,
    "evaluate": evaluate,
    "tfrecords_tools.inspect": records_inspect,
    "tfrecords_tools.verify": records_verify,
    "tfrecords_tools.preview": records_preview,
}


def run_command(name, **flag_values):
    """Parses `--key=value` flags as the command line would and runs the command's main."""
    flag_registry = flags.FLAGS
    flag_registry.unparse_flags()
    flag_registry([COMMANDS[name].__name__] + [f"--{key}={value}" for key, value in flag_values.items()])
    try:
        COMMANDS[name].main([])
    finally:
        flag_registry.unparse_flags()
        keras.mixed_precision.set_dtype_policy("float32")  # train may have changed it
