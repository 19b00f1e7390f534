"""AdamW for the JAX engine: optax, with the TensorFlow engine's update formula. No TensorFlow.

    optax.chain(clip_by_global_norm(max_grad_norm), multi_transform({group: tf_style_adamw(...)}))

Clipping is by the global norm over every trained network together, as the TF engine clips
all its gradients at once; each group (the UNet, the text encoder) then has its own AdamW and
learning-rate schedule. `tf_style_adamw` is the TF engine's update (Keras AdamW, whose Adam
step is TF's ResourceApplyAdam) term for term, because optax.adamw places epsilon elsewhere:

    decay   var -= lr * weight_decay * var                      (before the Adam step, as Keras)
    Adam    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
            var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

optax.adamw divides by sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - b2^t) + eps: its epsilon acts
sqrt(1 - b2^t) times larger (31x at t=1, b2=0.999), enough to move tiny-gradient weights
apart, so the engines would not agree step by step.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dbdist.training.schedules import WarmupThenDecay  # keras.ops only: no TensorFlow

UNET, TEXT_ENCODER = "unet", "text_encoder"
# Metric name of each group's learning rate (as the TF engine logs them).
LEARNING_RATE_METRICS = {UNET: "learning_rate", TEXT_ENCODER: "text_encoder_learning_rate"}


class TfStyleAdamState(NamedTuple):
    count: jax.Array  # updates applied so far (Keras' optimizer.iterations)
    mu: optax.Updates
    nu: optax.Updates


def tf_style_adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Keras AdamW's update on the TensorFlow backend (see the module docstring) as an optax transform.

    `learning_rate`: a float or schedule(count) -> rate, evaluated at the update count before
    this update (Keras evaluates it at `iterations`, then increments).
    """

    def init(params):
        return TfStyleAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    # float32 constants, as TF's kernel takes them: 1 - float32(0.999) is not float32(0.001).
    beta_1, beta_2, epsilon = np.float32(b1), np.float32(b2), np.float32(eps)

    def update(grads, state, params):
        lr = jnp.asarray(learning_rate(state.count) if callable(learning_rate) else learning_rate, jnp.float32)
        t = (state.count + 1).astype(jnp.float32)
        alpha = lr * jnp.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)
        decay = lr * weight_decay
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1.0 - beta_1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1.0 - beta_2), state.nu, grads)
        updates = jax.tree.map(lambda p, m, v: -(p * decay) - (m * alpha) / (jnp.sqrt(v) + epsilon), params, mu, nu)
        return updates, TfStyleAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def learning_rate_schedule(optim_config, base, total_steps):
    """The TF engine's schedule (dbdist/training/optimizer.py): a constant, else WarmupThenDecay."""
    if optim_config.lr_schedule == "constant" and not optim_config.lr_warmup_steps:
        return base
    return WarmupThenDecay(base, optim_config.lr_schedule, optim_config.lr_warmup_steps, total_steps,
                           power=optim_config.lr_power)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transform over {group: [arrays]} and each group's learning rate by step."""

    transform: optax.GradientTransformation
    schedules: dict  # {group: float or schedule(step)}

    def learning_rates(self, step):
        """{metric name: float32 rate} that the update at `step` (0-based) uses."""
        return {
            LEARNING_RATE_METRICS[group]: jnp.asarray(s(step) if callable(s) else s, jnp.float32)
            for group, s in self.schedules.items()
        }


def build_optimizer(optim_config, groups=(UNET,), total_steps=1, no_weight_decay=()):
    """AdamW with the DreamBooth recipe's settings for each trained group, clipped together.

    Groups in `no_weight_decay` take no decay (the token table of --train_token_embeddings,
    as the TF engine excludes it).
    """
    bases = {UNET: optim_config.learning_rate, TEXT_ENCODER: optim_config.text_encoder_learning_rate}
    schedules = {g: learning_rate_schedule(optim_config, bases[g], total_steps) for g in groups}
    per_group = {
        g: tf_style_adamw(schedules[g], optim_config.beta_1, optim_config.beta_2, optim_config.epsilon,
                          0.0 if g in no_weight_decay else optim_config.weight_decay)
        for g in groups
    }
    labels = lambda params: {group: jax.tree.map(lambda _: group, leaves) for group, leaves in params.items()}
    transform = optax.chain(
        optax.clip_by_global_norm(optim_config.max_grad_norm),
        optax.multi_transform(per_group, labels),
    )
    return Optimizer(transform=transform, schedules=schedules)
