"""AdamW that applies gradients the train step has already summed over replicas."""

import keras


class PreReducedAdamW(keras.optimizers.AdamW):
    """keras.optimizers.AdamW minus its own cross-replica sum.

    Under a tf.distribute strategy Keras' optimizer all-reduces the gradients
    it is given. Our step must sum them first (global-norm clipping and the
    fp16 overflow decision need the summed gradients), so the optimizer must
    not sum them a second time.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def build_optimizer(optim_config, learning_rate=None):
    """AdamW with the DreamBooth recipe's settings; no clipping here (the step clips)."""
    return PreReducedAdamW(
        learning_rate=optim_config.learning_rate if learning_rate is None else learning_rate,
        beta_1=optim_config.beta_1,
        beta_2=optim_config.beta_2,
        weight_decay=optim_config.weight_decay,
        epsilon=optim_config.epsilon,
    )
