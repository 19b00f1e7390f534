"""One optimisation step on one replica; the engine runs it under `strategy.run`.

Order, each fixed by correctness:
1. loss on this replica's examples, divided by the GLOBAL batch (dbdist/diffusion/dreambooth_loss.py), and
   its gradients, made dense, summed over `grad_accum_steps` micro-batches on the replica;
2. gradients summed over replicas, once;
3. fp16: unscale, and decide overflow from the summed gradients (same on all);
4. clip by global norm AFTER the sum (clipping each replica's part differs);
5. apply with optimizers that do not sum again (optimizer.py).
"""

import dataclasses

import tensorflow as tf

from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss


@dataclasses.dataclass
class TrainState:
    """Everything with variables; built inside the strategy's scope."""

    unet: object
    vae_encoder: object
    optimizer: object  # the UNet's
    schedule: object
    step: tf.Variable  # global step: counts every step, skipped (fp16 overflow) ones too
    loss_scale: object = None  # DynamicLossScale under fp16, else None
    text_encoder: object = None  # set when the text encoder is trained too
    text_optimizer: object = None
    # --train_token_embeddings: (the text encoder's token table, (vocab, 1) mask of the rows that train)
    token_rows: tuple = None

    def variable_groups(self):
        """[(variables, optimizer), ...] of everything trained."""
        groups = [(self.unet.trainable_variables, self.optimizer)]
        if self.text_encoder is not None:
            groups.append((self.text_encoder.trainable_variables, self.text_optimizer))
        return groups

    def trainable_variables(self):
        return [v for variables, _ in self.variable_groups() for v in variables]


def micro_batch_gradients(state: TrainState, batch, settings: LossSettings = None):
    """(gradients, metrics) of one micro-batch on this replica: no communication, so XLA can compile it.

    The batch carries its examples' noise and timesteps, drawn by the input pipeline.
    """
    variables = state.trainable_variables()
    with tf.GradientTape() as tape:
        loss, terms = dreambooth_loss(
            state.unet, state.vae_encoder, state.schedule, batch, settings, text_encoder=state.text_encoder
        )
        scaled = loss * state.loss_scale.scale if state.loss_scale is not None else loss
    # The token embedding's gradient arrives as tf.IndexedSlices, one row per token
    # occurrence: `+` cannot sum them, and the global norm of repeated rows (padding
    # repeats one token) is not the norm of their sum. Dense, as PyTorch's embedding gradient.
    gradients = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
    if state.token_rows is not None:  # only the chosen words' rows train: the others' gradients are 0
        table, mask = state.token_rows
        gradients = [g * mask if v is table else g for g, v in zip(gradients, variables)]
    return gradients, {"loss": loss, **terms}


def replica_train_step(state: TrainState, batches, max_grad_norm, compute):
    """Returns this replica's metrics (loss terms already / global batch; sum them over replicas).

    `batches` is one batch per micro-step of gradient accumulation;
    `compute(batch)` is `micro_batch_gradients` bound to the state and settings,
    possibly XLA-compiled. Each micro-batch's randomness came with it from the input
    pipeline, keyed by its own micro-step (step * accumulation + micro), so
    accumulation keeps keys distinct.
    """
    gradients, metrics = None, None
    for batch in batches:
        micro_gradients, micro_metrics = compute(batch)
        if gradients is None:
            gradients, metrics = list(micro_gradients), dict(micro_metrics)
        else:
            gradients = [g + m for g, m in zip(gradients, micro_gradients)]
            metrics = {k: metrics[k] + micro_metrics[k] for k in metrics}
    gradients = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

    finite = tf.constant(True)
    if state.loss_scale is not None:
        gradients, finite = state.loss_scale.unscale(gradients)
    gradients, grad_norm = tf.clip_by_global_norm(gradients, max_grad_norm)
    if state.loss_scale is None:
        _apply(state, gradients)
    else:
        # Skipping needs a cond around the optimizers, and their merge_call cannot
        # sit inside a cond in replica context: decide in cross-replica context.
        tf.distribute.get_replica_context().merge_call(_apply_if_finite, args=(state, gradients, finite))
    return {
        **metrics,
        # Identical on every replica: divide by the replica count after the cross-replica sum.
        "grad_norm": grad_norm,
        "skipped": 1.0 - tf.cast(finite, tf.float32),
    }


def _apply(state, gradients):
    start = 0
    for variables, optimizer in state.variable_groups():
        optimizer.apply(gradients[start : start + len(variables)], variables)
        start += len(variables)


def _apply_if_finite(strategy, state, gradients, finite):
    # `finite` was computed from all-reduced gradients: every replica holds the same value.
    finite = strategy.experimental_local_results(finite)[0]

    def apply():
        _apply(state, gradients)
        return tf.constant(True)

    tf.cond(finite, apply, lambda: tf.constant(False))
    state.loss_scale.update(finite)
