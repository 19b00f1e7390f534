"""Random numbers keyed to examples, not to replicas or devices, drawn in the input pipeline.

Each example's VAE-sampling noise, diffusion noise and timestep come from
stateless ops keyed by (seed, step, position of the example in the global
batch, stream, purpose), where `step` is the input pipeline's own step (with
gradient accumulation, a micro-step: optimizer step * accumulation + micro-batch).
A step therefore draws the same numbers whether the global batch runs on one
device or is split over many replicas and workers, whichever engine consumes it,
and a resumed run draws what the uninterrupted run would have. Drawn here, on the
host, and never inside XLA-compiled code: XLA generates other numbers from the
same stateless keys, so `--jit_compile` would change the noise, not just the speed.
"""

import dataclasses

import tensorflow as tf

from dbdist.data import batch_keys as keys

INSTANCE_STREAM, CLASS_STREAM = 0, 1  # = features.KIND_INSTANCE, KIND_CLASS
# Named, not "auto_select": XLA and TPUs would otherwise pick another generator,
# and --jit_compile or a TPU would draw different numbers for the same keys.
_ALG = "philox"
_VAE_NOISE, _DIFFUSION_NOISE, _TIMESTEP = 0, 1, 2
# The first three purposes are folded in as stream * 3 + purpose (codes 0..5, as runs
# have always drawn them); later purposes take codes from 6 up, so adding one changes
# none of the earlier draws.
_OFFSET_NOISE_CODES = {INSTANCE_STREAM: 6, CLASS_STREAM: 7}
# Batch key of each draw, per stream.
BATCH_KEYS = {
    INSTANCE_STREAM: {"vae_noise": keys.INSTANCE_VAE_NOISE, "noise": keys.INSTANCE_NOISE, "timestep": keys.INSTANCE_TIMESTEP},
    CLASS_STREAM: {"vae_noise": keys.CLASS_VAE_NOISE, "noise": keys.CLASS_NOISE, "timestep": keys.CLASS_TIMESTEP},
}


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """What the pipeline draws for each example: the shapes and range of its randomness."""

    latent_shape: tuple  # (h, w, channels) of one example's latents
    num_train_timesteps: int = 1000
    # Offset noise (--noise_offset): noise_offset x one standard normal per example and
    # channel, constant over the image, added to the diffusion noise; 0 adds nothing.
    noise_offset: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "latent_shape", tuple(int(d) for d in self.latent_shape))
        if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (h, w, channels) of positive sizes, got {self.latent_shape}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if not self.noise_offset >= 0:
            raise ValueError(f"noise_offset must be >= 0, got {self.noise_offset}")


def _key(seed, step, position, stream, purpose=None, code=None):
    code = stream * 3 + purpose if code is None else code
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    for value in (step, position, code):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64), alg=_ALG)
    return key


def vae_noise(seed, step, position, stream, shape):
    """`shape` standard normals for sampling one example's latent from the VAE posterior."""
    return tf.random.stateless_normal(shape, seed=_key(seed, step, position, stream, _VAE_NOISE), alg=_ALG)


def diffusion_noise(seed, step, position, stream, shape):
    """`shape` standard normals added to one example's latents."""
    return tf.random.stateless_normal(shape, seed=_key(seed, step, position, stream, _DIFFUSION_NOISE), alg=_ALG)


def timestep(seed, step, position, stream, num_train_timesteps):
    """One int32 timestep, uniform over [0, num_train_timesteps)."""
    return tf.random.stateless_uniform(
        [], seed=_key(seed, step, position, stream, _TIMESTEP), minval=0, maxval=num_train_timesteps,
        dtype=tf.int32, alg=_ALG,
    )


def offset_noise(seed, step, position, stream, channels):
    """(1, 1, channels) standard normals: one offset per channel, constant over the image."""
    key = _key(seed, step, position, stream, code=_OFFSET_NOISE_CODES[stream])
    return tf.random.stateless_normal((1, 1, channels), seed=key, alg=_ALG)


def draw(spec: NoiseSpec, *, seed, step, position, stream):
    """{"vae_noise", "noise", "timestep"} of the example at global-batch `position` of `stream` at `step`."""
    noise = diffusion_noise(seed, step, position, stream, spec.latent_shape)
    if spec.noise_offset:
        # As diffusers' scripts: noise += noise_offset * randn(B, C, 1, 1) (crosslabs.org's offset noise).
        noise = noise + spec.noise_offset * offset_noise(seed, step, position, stream, spec.latent_shape[-1])
    return {
        "vae_noise": vae_noise(seed, step, position, stream, spec.latent_shape),
        "noise": noise,
        "timestep": timestep(seed, step, position, stream, spec.num_train_timesteps),
    }


def with_noise(batch, spec: NoiseSpec, *, seed, step):
    """A copy of a hand-made batch (tests, benchmarks) with its randomness added as the reader adds it.

    Each example's draws are keyed by its EXAMPLE_POSITION; class keys are added when
    the batch has class examples (CLASS_EMBEDDING).
    """
    streams = [INSTANCE_STREAM] + ([CLASS_STREAM] if keys.CLASS_EMBEDDING in batch else [])
    positions = tf.convert_to_tensor(batch[keys.EXAMPLE_POSITION])
    out = dict(batch)
    for stream in streams:
        draws = [draw(spec, seed=seed, step=step, position=positions[i], stream=stream) for i in range(positions.shape[0])]
        for name, key in BATCH_KEYS[stream].items():
            out[key] = tf.stack([d[name] for d in draws])
    return out
