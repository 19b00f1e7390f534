"""Learning-rate schedules: linear warm-up, then constant, linear, cosine or polynomial decay."""

import keras
from keras import ops

from dbdist.errors import UserError

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "polynomial")
# Where polynomial decay ends: diffusers' get_polynomial_decay_schedule_with_warmup
# (src/diffusers/optimization.py) decays (lr - lr_end) * remaining**power + lr_end with
# lr_end=1e-7, and its DreamBooth script passes power=--lr_power (default 1.0).
POLYNOMIAL_END_LEARNING_RATE = 1e-7


class WarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr * step/warmup for `warmup_steps`, then `kind`'s decay by `total_steps` (as diffusers):
    to 0, or for polynomial to POLYNOMIAL_END_LEARNING_RATE as (1 - progress)**power."""

    def __init__(self, learning_rate, kind="constant", warmup_steps=0, total_steps=1, power=1.0):
        if kind not in SCHEDULES:
            raise UserError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}")
        if kind == "constant" and warmup_steps:
            raise UserError("lr_schedule=constant has no warm-up; use constant_with_warmup")
        if warmup_steps < 0 or warmup_steps > max(total_steps, 0):
            raise UserError(f"lr_warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        if kind == "polynomial" and not learning_rate > POLYNOMIAL_END_LEARNING_RATE:
            raise UserError(
                f"lr_schedule=polynomial decays to {POLYNOMIAL_END_LEARNING_RATE:g}: the learning rate must be above it, "
                f"got {learning_rate:g}"
            )
        if power <= 0:
            raise UserError(f"lr_power must be > 0, got {power}")
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
            end = POLYNOMIAL_END_LEARNING_RATE
            return warm * ((self.learning_rate - end) * (1.0 - progress) ** self.power + end)
        return self.learning_rate * warm * decay

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "power": self.power,
        }
