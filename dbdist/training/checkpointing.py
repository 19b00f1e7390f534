"""Training checkpoints (models, optimizers, step, loss scale) and exact resume.

What makes a resume exact: every random number is keyed by (seed, step,
example) and the data position is a function of the step, so the step
counter in the checkpoint restores both the RNG state and the data position.
Release weights (export/*.h5) are written separately, by the chief only.
"""

import json
import os

import tensorflow as tf
from absl import logging

from dbdist.errors import UserError
from dbdist.training.strategy import worker_scratch_dir

# Settings that must not change across a resume (the rest, such as the
# strategy, the number of replicas or max_train_steps, may).
_MUST_MATCH = (
    ("model",),
    ("train", "global_batch_size"),
    ("train", "grad_accum_steps"),
    ("train", "seed"),
    ("train", "train_text_encoder"),
    ("train", "prior_loss_weight"),
    ("train", "lora_rank"),
    ("train", "lora_alpha"),
    ("train", "lora_text_encoder"),
    ("runtime", "mixed_precision"),
)


def check_resume_compatible(saved_config_path, new_config: dict):
    """Raises ValueError naming every setting that differs from the run being resumed."""
    with tf.io.gfile.GFile(saved_config_path) as f:
        saved = json.load(f)
    differences = []
    for path in _MUST_MATCH:
        old, new = saved, new_config
        for key in path:
            old, new = old.get(key) if isinstance(old, dict) else None, new.get(key)
        if old != new:
            name = ".".join(path)
            if path == ("model",):
                old = f"preset {saved['model']['preset']} at {saved['model']['resolution']} px"
                new = f"preset {new_config['model']['preset']} at {new_config['model']['resolution']} px"
            differences.append(f"{name}: {old!r} in the checkpoint, {new!r} now")
    if differences:
        raise UserError(
            f"cannot resume {os.path.dirname(saved_config_path)}: " + "; ".join(differences)
            + ". Use a new --output_dir, or the settings it was started with."
        )


class Checkpoints:
    """tf.train.CheckpointManager over everything with state; all workers call save()."""

    def __init__(self, strategy, output_dir, state, keep):
        self.directory = os.path.join(output_dir, "checkpoints")
        objects = {"unet": state.unet, "optimizer": state.optimizer, "step": state.step}
        if state.text_encoder is not None:
            objects.update(text_encoder=state.text_encoder, text_optimizer=state.text_optimizer)
        if state.loss_scale is not None:
            objects.update(loss_scale=tf.train.Checkpoint(scale=state.loss_scale.scale, good_steps=state.loss_scale.good_steps))
        self.checkpoint = tf.train.Checkpoint(**objects)
        # Non-chief workers must write too (saving is collective), but somewhere only they use.
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, worker_scratch_dir(strategy, self.directory), max_to_keep=keep
        )
        self.last_step = None  # of the newest checkpoint restored or saved by this process

    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self):
        """Restores the newest checkpoint (every worker reads the chief's); returns its step or 0."""
        path = self.latest()
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = self.last_step = int(self.checkpoint.step.numpy())
        logging.info("resumed from %s at step %d", path, step)
        return step

    def save(self, step):
        path = self.manager.save(checkpoint_number=step)
        self.last_step = step
        logging.info("checkpoint %s", path)
        return path
