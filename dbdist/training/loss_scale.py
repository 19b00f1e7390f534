"""Dynamic loss scaling for fp16, decided on the all-reduced gradients.

Keras' `LossScaleOptimizer` checks for overflow on each replica's own
gradients, so replicas can disagree on skipping a step (diverged weights,
or a multi-worker deadlock). Here the caller passes gradients that are
already summed over replicas: every replica sees the same values, takes the
same decision and updates the scale identically.
"""

import tensorflow as tf


class DynamicLossScale:
    """Halve on overflow (and skip the step); double after `growth_interval` good steps."""

    def __init__(self, initial_scale=2.0**15, growth_interval=2000, min_scale=1.0):
        self.growth_interval = growth_interval
        self.min_scale = min_scale
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_scale_good_steps")

    def unscale(self, gradients):
        """(gradients / scale, all finite?)."""
        inverse = 1.0 / self.scale
        gradients = [g * inverse for g in gradients]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
        return gradients, finite

    def update(self, finite):
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        new_scale = tf.where(
            finite,
            tf.where(grow, self.scale * 2.0, self.scale),
            tf.maximum(self.scale / 2.0, self.min_scale),
        )
        new_good = tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.good_steps + 1, tf.zeros_like(self.good_steps))
        self.scale.assign(new_scale)
        self.good_steps.assign(new_good)
