"""The compiled inner loop: `steps_per_loop` steps of `strategy.run` inside one tf.function."""

import functools

import tensorflow as tf

from dbdist.training.step import micro_batch_gradients, replica_train_step

METRIC_NAMES = ("loss", "instance_loss", "prior_loss", "grad_norm", "skipped")
# The learning rate each step's update used, per optimizer (the text encoder's when it is trained).
LEARNING_RATE_NAMES = ("learning_rate", "text_encoder_learning_rate")


def make_train_loop(strategy, state, settings, *, max_grad_norm, grad_accum_steps=1, jit_compile=False):
    """Returns loop(iterator, num_steps) -> {metric: (num_steps,) tensor}, one value per step.

    Loss terms are summed over replicas (each replica's share is already / global
    batch); grad_norm and skipped are the same on every replica. The learning rates
    are read in the step, before its update, from the iteration that update uses:
    read after the loop, every step of it would show the rate of the next one.
    """
    optimizers = [optimizer for _, optimizer in state.variable_groups()]
    names = METRIC_NAMES + LEARNING_RATE_NAMES[: len(optimizers)]
    replicas = strategy.num_replicas_in_sync
    compute = functools.partial(micro_batch_gradients, state, settings=settings)
    if jit_compile:
        # XLA compiles the per-replica forward/backward, not the strategy.run around it
        # (which cannot be compiled): the collectives and optimizer stay outside.
        compute = tf.function(compute, jit_compile=True)

    def replica_fn(*batches):
        return replica_train_step(state, list(batches), max_grad_norm, compute)

    def reduced(per_replica, name):
        value = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[name], axis=None)
        return value / replicas if name in ("grad_norm", "skipped") else value

    # autograph=False: the step's Python control flow is all static, and converting
    # Keras and our code through autograph took ~10 s per trace.
    @tf.function(autograph=False)
    def loop(iterator, num_steps):
        def body(i, history):
            batches = tuple(next(iterator) for _ in range(grad_accum_steps))
            # Keras' apply() uses schedule(iterations), then increments iterations.
            learning_rates = [tf.cast(optimizer.learning_rate, tf.float32) for optimizer in optimizers]
            with tf.control_dependencies(learning_rates):
                per_replica = strategy.run(replica_fn, args=batches)
            values = [reduced(per_replica, name) for name in METRIC_NAMES] + learning_rates
            history = [h.write(i, value) for h, value in zip(history, values)]
            with tf.control_dependencies([h.flow for h in history]):
                state.step.assign_add(1)
            return i + 1, history

        history = [tf.TensorArray(tf.float32, size=num_steps) for _ in names]
        _, history = tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), history))
        return {name: h.stack() for name, h in zip(names, history)}

    return loop
