"""Where a run writes when Vertex AI chose the place: the AIP_* environment variables.

With a CustomJob's `baseOutputDirectory` (launch.vertex_ai's --base_output_dir=gs://B/RUN), Vertex AI
sets on every replica:

    AIP_CHECKPOINT_DIR      = gs://B/RUN/checkpoints/
    AIP_MODEL_DIR           = gs://B/RUN/model/
    AIP_TENSORBOARD_LOG_DIR = gs://B/RUN/logs/

dbdist keeps one output dir with `checkpoints/`, `export/`, `tensorboard/`, `metrics.jsonl`, ...
inside, so with no --output_dir train uses the folder those variables share, gs://B/RUN. Its
checkpoints are then exactly AIP_CHECKPOINT_DIR (what a Vertex restart resumes from), and the
export sits beside it in gs://B/RUN/export/ (not AIP_MODEL_DIR: dbdist exports keras-cv .h5
files, not a SavedModel for Vertex's model registry). An explicit --output_dir always wins.
"""

import posixpath

from absl import logging

from dbdist.errors import UserError

AIP_VARIABLES = ("AIP_CHECKPOINT_DIR", "AIP_MODEL_DIR", "AIP_TENSORBOARD_LOG_DIR")


def vertex_output_dir(environ):
    """The run folder the AIP_* variables share (their parent), or None outside Vertex AI.

    Raises ValueError when they disagree, e.g. a hyperparameter trial pointing elsewhere.
    """
    parents = {name: posixpath.dirname(environ[name].rstrip("/")) for name in AIP_VARIABLES if environ.get(name)}
    if not parents:
        return None
    if len(set(parents.values())) > 1:
        raise UserError(f"the AIP_* directories have different parents {parents}; pass --output_dir explicitly")
    return next(iter(parents.values()))


def default_output_dir(flag_values, environ):
    """Sets --output_dir from the AIP_* variables when it was not given (see the module docstring)."""
    if flag_values.output_dir:
        return
    folder = vertex_output_dir(environ)
    if folder:
        flag_values.output_dir = folder
        logging.info("--output_dir not given: using %s, the parent of Vertex AI's AIP_CHECKPOINT_DIR", folder)
