"""The JAX engine's training checkpoints: orbax's CheckpointManager over the whole TrainState.

What makes a resume exact is what makes the TF engine's exact (dbdist/training/checkpointing.py):
the state holds the trained weights, the AdamW moments and count, and the step; the data
position and every random number follow from the step. Each checkpoint is a folder
`output_dir/checkpoints/<step>` (local or gs://) that orbax writes under a temporary name and
finalises last, so a process killed while saving leaves no checkpoint that looks complete.
Every process calls save() and restore() (orbax writes each array once, from one process).
"""

import logging as python_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class _OrbaxInfoHidden(python_logging.Filter):
    """Orbax logs ~25 INFO lines per save through absl; they show from --verbosity=1 (as TensorFlow's logs)."""

    def filter(self, record):
        return (record.levelno >= python_logging.WARNING or logging.get_verbosity() >= 1
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


def _absolute(path):
    return path if "://" in str(path) else os.path.abspath(path)


class Checkpoints:
    """Saves and restores a TrainState pytree under `output_dir/checkpoints`."""

    def __init__(self, output_dir, keep):
        handler = logging.get_absl_handler()  # every logger's records end there, orbax's too
        if not any(isinstance(f, _OrbaxInfoHidden) for f in handler.filters):
            handler.addFilter(_OrbaxInfoHidden())
        self.directory = _absolute(os.path.join(str(output_dir), "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True,
                # Synchronous: a checkpoint is on disk when save() returns, before SIGTERM's exit.
                enable_async_checkpointing=False,
            ),
        )
        self.last_step = None  # of the newest checkpoint restored or saved by this process

    def latest(self):
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def restore_latest(self, state):
        """The newest checkpoint, restored with `state`'s structure, dtypes and shardings (or `state` if none)."""
        step = self.latest()
        if step is None:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        self.last_step = step
        logging.info("resumed from %s at step %d", os.path.join(self.directory, str(step)), step)
        return restored

    def save(self, step, state):
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        self.last_step = step
        logging.info("checkpoint %s", os.path.join(self.directory, str(step)))

    def close(self):
        self.manager.close()
