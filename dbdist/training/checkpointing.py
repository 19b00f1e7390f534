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

from dbdist.config import ENGINE_BACKENDS, ENGINE_NAMES, LEGACY_PAD_TOKEN_ID
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
    ("train", "noise_offset"),
    ("train", "snr_gamma"),
    ("train", "lora_rank"),
    ("train", "lora_alpha"),
    ("train", "lora_text_encoder"),
    ("train", "train_token_embeddings"),
    ("train", "trained_token_ids"),
    ("runtime", "mixed_precision"),
)
# Settings added since runs were first recorded: a config.json without one ran with this value.
_ABSENT_MEANS = {
    ("train", "noise_offset"): 0.0,
    ("train", "snr_gamma"): None,
    ("model", "text_encoder", "pad_token_id"): LEGACY_PAD_TOKEN_ID,
    ("train", "lora_rank"): None,
    ("train", "lora_alpha"): None,
    ("train", "lora_text_encoder"): False,
    ("train", "train_token_embeddings"): [],  # as JSON holds the tuple
    ("train", "trained_token_ids"): [],
}


def _setting(config: dict, path):
    """The value at `path` of a config.json dict; a setting it predates reads as its value then."""
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return _ABSENT_MEANS.get(path)
        config = config[key]
    return config


def _model_differences(saved: dict, new: dict, path=("model",)):
    """'model.a.b: old in the checkpoint, new now' for each model setting that differs."""
    differences = []
    for key in sorted(set(saved) | set(new)):
        where = path + (key,)
        old = saved[key] if key in saved else _ABSENT_MEANS.get(where)
        now = new[key] if key in new else _ABSENT_MEANS.get(where)
        if isinstance(old, dict) and isinstance(now, dict):
            differences += _model_differences(old, now, where)
        elif old != now:
            differences.append(f"{'.'.join(where)}: {old!r} in the checkpoint, {now!r} now")
    return differences


def check_resume_compatible(saved_config_path, new_config: dict):
    """Raises ValueError naming every setting that differs from the run being resumed."""
    with tf.io.gfile.GFile(saved_config_path) as f:
        saved = json.load(f)
    differences = []
    for path in _MUST_MATCH:
        old, new = _setting(saved, path), _setting(new_config, path)
        if path == ("model",) and old.get("preset") != new.get("preset"):
            differences.append(f"model.preset: {old.get('preset')!r} in the checkpoint, {new.get('preset')!r} now")
        elif path == ("model",):
            differences += _model_differences(old, new)
        elif old != new:
            differences.append(f"{'.'.join(path)}: {old!r} in the checkpoint, {new!r} now")
    if differences:
        raise UserError(
            f"cannot resume {os.path.dirname(saved_config_path)}: " + "; ".join(differences)
            + ". Use a new --output_dir, or the settings it was started with."
        )


def check_same_engine(saved_config_path, engine):
    """Raises UserError naming both engines if the run in this folder was trained by the other one.

    Each engine reads only its own checkpoints (tf.train's files, orbax's step folders), so a
    run resumed under the other engine would otherwise start again from step 0 beside them.
    Runs saved before there were two engines were trained by the TF engine.
    """
    with tf.io.gfile.GFile(saved_config_path) as f:
        saved = json.load(f).get("runtime", {}).get("engine", "tf")
    if saved != engine:
        raise UserError(
            f"cannot resume {os.path.dirname(saved_config_path)}: it was trained by the {ENGINE_NAMES.get(saved, saved)} "
            f"(KERAS_BACKEND={ENGINE_BACKENDS.get(saved, saved)}), this run uses the {ENGINE_NAMES[engine]}; their checkpoints "
            f"differ. Resume with --engine={saved}, or use a new --output_dir."
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
