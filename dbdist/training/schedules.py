"""Learning-rate schedules: linear warm-up, then constant, linear, cosine or polynomial decay."""

import keras
from keras import ops

from dbdist.errors import UserError

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "polynomial")


class WarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr * step/warmup for `warmup_steps`, then `kind`'s decay to 0 by `total_steps` (as diffusers)."""

    def __init__(self, learning_rate, kind="constant", warmup_steps=0, total_steps=1, power=2.0):
        if kind not in SCHEDULES:
            raise UserError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
        if kind == "constant" and warmup_steps:
            raise UserError("lr_schedule=constant has no warm-up; use constant_with_warmup")
        if warmup_steps < 0 or warmup_steps > max(total_steps, 0):
            raise UserError(f"lr_warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        self.learning_rate = learning_rate
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, 1)
        self.power = power

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = ops.minimum(step / warmup, 1.0) if self.warmup_steps else 1.0
        decay_span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_span, 0.0, 1.0)
        if self.kind in ("constant", "constant_with_warmup"):
            decay = 1.0
        elif self.kind == "linear":
            decay = 1.0 - progress
        elif self.kind == "cosine":
            decay = 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        else:
            decay = (1.0 - progress) ** self.power
        return self.learning_rate * warm * decay

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "power": self.power,
        }
