"""One optimisation step on one replica; the engine runs it under `strategy.run`.

Order, each fixed by correctness:
1. loss on this replica's examples, divided by the GLOBAL batch (loss.py);
2. gradients summed over replicas, once;
3. fp16: unscale, and decide overflow from the summed gradients (same on all);
4. clip by global norm AFTER the sum (clipping each replica's part differs);
5. apply with an optimizer that does not sum again (optimizer.py).
"""

import dataclasses

import tensorflow as tf

from dbdist.training.loss import LossSettings, dreambooth_loss


@dataclasses.dataclass
class TrainState:
    """Everything with variables; built inside the strategy's scope."""

    unet: object
    vae_encoder: object
    optimizer: object
    schedule: object
    step: tf.Variable  # global step: counts every step, skipped (fp16 overflow) ones too
    loss_scale: object = None  # DynamicLossScale under fp16, else None


def replica_train_step(state: TrainState, batch, settings: LossSettings, max_grad_norm):
    """Returns this replica's metrics (loss terms already / global batch; sum them over replicas)."""
    variables = state.unet.trainable_variables
    with tf.GradientTape() as tape:
        loss, terms = dreambooth_loss(state.unet, state.vae_encoder, state.schedule, batch, state.step, settings)
        scaled = loss * state.loss_scale.scale if state.loss_scale is not None else loss
    gradients = tape.gradient(scaled, variables)
    gradients = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

    finite = tf.constant(True)
    if state.loss_scale is not None:
        gradients, finite = state.loss_scale.unscale(gradients)
    gradients, grad_norm = tf.clip_by_global_norm(gradients, max_grad_norm)
    if state.loss_scale is not None:
        tf.cond(finite, lambda: _apply(state, gradients, variables), lambda: tf.constant(False))
        state.loss_scale.update(finite)
    else:
        _apply(state, gradients, variables)
    return {
        "loss": loss,
        **terms,
        # Identical on every replica: divide by the replica count after the cross-replica sum.
        "grad_norm": grad_norm,
        "skipped": 1.0 - tf.cast(finite, tf.float32),
    }


def _apply(state, gradients, variables):
    state.optimizer.apply(gradients, variables)
    return tf.constant(True)
