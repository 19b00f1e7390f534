"""AdamW for the TensorFlow engine: pre-summed gradients, one fused kernel per variable.

Two departures from keras.optimizers.AdamW, both TF-engine concerns:

1. Under a tf.distribute strategy Keras' optimizer all-reduces the gradients it
   is given. Our step sums them first (global-norm clipping and the fp16
   overflow decision need the summed gradients), so `_backend_update_step`
   here applies them as they are, never summing a second time.
2. Keras builds its Adam update from ~15 graph ops per variable and evaluates
   the learning-rate schedule once per variable. With the UNet's ~300-700
   variables that made tracing the train step take ~25 s. Here the schedule,
   decay factor and bias corrections are computed once per step, and each
   variable is updated by TF's fused `ResourceApplyAdam` (the same formula:
   m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
   var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)).
"""

import keras
import tensorflow as tf

from dbdist.training.schedules import WarmupThenDecay


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _in_cross_replica_context(fn, strategy, *args):
    """Calls `fn(strategy, *args)` in cross-replica context, entering it if needed.

    The fp16 step applies gradients from inside a merge_call (already
    cross-replica), where Keras' own `maybe_merge_call` would fail.
    """
    if tf.distribute.in_cross_replica_context():
        return fn(tf.distribute.get_strategy(), *args)
    return tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, *args)


class EngineAdamW(keras.optimizers.AdamW):
    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        decay = tf.cast(self._get_current_learning_rate(), tf.float32) * self.weight_decay

        def apply(distribution, variables):
            for variable in variables:
                variable = _tf_variable(variable)
                if self._use_weight_decay(variable):
                    distribution.extended.update(
                        variable, lambda v: v.assign_sub(v * tf.cast(decay, v.dtype)), group=False
                    )

        _in_cross_replica_context(apply, self._distribution_strategy, variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        grads_and_vars = list(zip(grads, [_tf_variable(v) for v in trainable_variables]))
        _in_cross_replica_context(self._distributed_tf_update_step, self._distribution_strategy, grads_and_vars, learning_rate)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.constant(self.beta_1, tf.float32), step)
        beta_2_power = tf.pow(tf.constant(self.beta_2, tf.float32), step)
        learning_rate = tf.cast(learning_rate, tf.float32)

        def update(variable, gradient):
            index = self._get_variable_index(variable)
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=_tf_variable(self._momentums[index]).handle,
                v=_tf_variable(self._velocities[index]).handle,
                beta1_power=tf.cast(beta_1_power, dtype),
                beta2_power=tf.cast(beta_2_power, dtype),
                lr=tf.cast(learning_rate, dtype),
                beta1=tf.constant(self.beta_1, dtype),
                beta2=tf.constant(self.beta_2, dtype),
                epsilon=tf.constant(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype),
            )

        for gradient, variable in grads_and_vars:
            distribution.extended.update(variable, update, args=(gradient,), group=False)


def build_optimizer(optim_config, learning_rate=None, total_steps=1):
    """AdamW with the DreamBooth recipe's settings and schedule; no clipping here (the step clips)."""
    base = optim_config.learning_rate if learning_rate is None else learning_rate
    schedule = base
    if optim_config.lr_schedule != "constant" or optim_config.lr_warmup_steps:
        schedule = WarmupThenDecay(
            base, optim_config.lr_schedule, optim_config.lr_warmup_steps, total_steps, power=optim_config.lr_power
        )
    return EngineAdamW(
        learning_rate=schedule,
        beta_1=optim_config.beta_1,
        beta_2=optim_config.beta_2,
        weight_decay=optim_config.weight_decay,
        epsilon=optim_config.epsilon,
    )
