"""Random numbers keyed to examples, not to replicas or devices.

Each example's VAE-sampling noise, diffusion noise and timestep come from
stateless ops keyed by (seed, step, position of the example in the global
batch, stream, purpose). A step therefore draws the same numbers whether the
global batch runs on one device or is split over many replicas and workers,
and a resumed run draws what the uninterrupted run would have.
"""

import tensorflow as tf

INSTANCE_STREAM, CLASS_STREAM = 0, 1
# Named, not "auto_select": XLA and TPUs would otherwise pick another generator,
# and --jit_compile or a TPU would draw different numbers for the same keys.
_ALG = "philox"
_VAE_NOISE, _DIFFUSION_NOISE, _TIMESTEP = 0, 1, 2


def _key(seed, step, position, stream, purpose):
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    for value in (step, position, stream * 3 + purpose):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64), alg=_ALG)
    return key


def _per_example(positions, draw):
    # The per-replica batch size is static, so this unrolls into a few ops.
    return tf.stack([draw(positions[i]) for i in range(positions.shape[0])])


def vae_noise(seed, step, positions, stream, shape):
    """(B,) + shape standard normals for sampling latents from the VAE posterior."""
    return _per_example(
        positions, lambda p: tf.random.stateless_normal(shape, seed=_key(seed, step, p, stream, _VAE_NOISE), alg=_ALG)
    )


def diffusion_noise(seed, step, positions, stream, shape):
    """(B,) + shape standard normals added to the latents."""
    return _per_example(
        positions, lambda p: tf.random.stateless_normal(shape, seed=_key(seed, step, p, stream, _DIFFUSION_NOISE), alg=_ALG)
    )


def timesteps(seed, step, positions, stream, num_train_timesteps):
    """(B,) int32 timesteps, uniform over [0, num_train_timesteps)."""
    return _per_example(
        positions,
        lambda p: tf.random.stateless_uniform(
            [], seed=_key(seed, step, p, stream, _TIMESTEP), minval=0, maxval=num_train_timesteps, dtype=tf.int32, alg=_ALG
        ),
    )
