"""--engine=tf|jax: which training engine runs, i.e. Keras' backend, chosen before Keras is imported.

Keras reads KERAS_BACKEND once, when it is first imported, and the engine is that backend:
`KERAS_BACKEND=jax python -m dbdist.train ...` and `python -m dbdist.train --engine=jax ...`
are the same run. train imports this module first (absl parses flags only after the imports),
so --engine is read here from sys.argv; train's main then checks that the backend Keras
started with is the one asked for (it is not when Keras was imported earlier, e.g. in-process).
"""

import os
import sys

from dbdist.config import ENGINE_BACKENDS as BACKENDS
from dbdist.errors import UserError

ENGINES = {backend: engine for engine, backend in BACKENDS.items()}


def requested_engine(argv):
    """The value of --engine in argv (`--engine=jax` or `--engine jax`), else None."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":  # the rest is not ours (e.g. a launcher's command)
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "engine":
            return value if has_value else next(args, "")
    return None


def set_backend_from_argv(argv, environ):
    engine = requested_engine(argv)
    if engine in BACKENDS:
        environ["KERAS_BACKEND"] = BACKENDS[engine]


def engine_of_backend(backend, requested=None):
    """The engine of Keras' running `backend`; UserError if it is not the `requested` one or has none."""
    if backend not in ENGINES:
        raise UserError(f"Keras runs on the {backend!r} backend; dbdist trains with KERAS_BACKEND=tensorflow (TF engine) "
                        "or jax (JAX engine)")
    engine = ENGINES[backend]
    if requested and requested != engine:
        raise UserError(f"--engine={requested}, but Keras was already imported with the {backend} backend; "
                        f"start a new process with --engine={requested} (or KERAS_BACKEND={BACKENDS[requested]})")
    return engine


set_backend_from_argv(sys.argv, os.environ)
