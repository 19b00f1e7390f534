"""The DreamBooth loss on one replica's share of the global batch.

loss = mean instance MSE + prior_loss_weight * mean class (prior) MSE, where
each mean is over the GLOBAL batch: per-example losses are summed on the
replica and divided by the global batch size, so that summing gradients over
replicas gives exactly the one-device gradient.
"""

import collections
import dataclasses

import tensorflow as tf
from keras import ops

from dbdist.data import features
from dbdist.diffusion import NoiseSchedule, sample_latents, timestep_embedding
from dbdist.training import example_noise


_Stream = collections.namedtuple("_Stream", "pixels latent_mean latent_logvar embedding token_ids rng_stream")
_INSTANCE = _Stream(
    features.INSTANCE_PIXELS, features.INSTANCE_LATENT_MEAN, features.INSTANCE_LATENT_LOGVAR,
    features.INSTANCE_EMBEDDING, features.INSTANCE_TOKEN_IDS, example_noise.INSTANCE_STREAM,
)
_CLASS = _Stream(
    features.CLASS_PIXELS, features.CLASS_LATENT_MEAN, features.CLASS_LATENT_LOGVAR,
    features.CLASS_EMBEDDING, features.CLASS_TOKEN_IDS, example_noise.CLASS_STREAM,
)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    # Instance examples per optimizer step over all replicas (global batch x accumulation steps).
    global_batch_size: int
    prior_loss_weight: float
    scaling_factor: float
    time_embedding_dim: int
    seed: int
    latent_shape: tuple  # (h, w, channels) of one example's latents
    num_train_timesteps: int = 1000


def _per_example_mse(prediction, target):
    # In fp32 whatever the compute dtype: bf16/fp16 squares lose too much.
    error = ops.cast(prediction, "float32") - ops.cast(target, "float32")
    return ops.mean(ops.square(error), axis=(1, 2, 3))


def draw_randomness(batch, step, settings: LossSettings):
    """VAE-sampling noise, diffusion noise and timesteps for every example of `batch`.

    Drawn outside any XLA-compiled code: XLA generates different numbers from the
    same stateless keys, so `--jit_compile` would otherwise change the training
    noise, not just the speed.
    """
    positions = batch[features.EXAMPLE_POSITION]
    streams = _streams(batch)

    def draw(fn, *args):
        return ops.concatenate([fn(settings.seed, step, positions, s.rng_stream, *args) for s in streams], axis=0)

    return {
        "vae_noise": draw(example_noise.vae_noise, settings.latent_shape),
        "noise": draw(example_noise.diffusion_noise, settings.latent_shape),
        "timesteps": draw(example_noise.timesteps, settings.num_train_timesteps),
    }


def _streams(batch):
    has_class = features.CLASS_EMBEDDING in batch
    return [_INSTANCE, _CLASS] if has_class else [_INSTANCE]


def _posterior(vae_encoder, batch, streams):
    """(mean, log-variance) of the VAE posterior: cached in latent records, else encoded now."""
    if features.INSTANCE_LATENT_MEAN in batch:
        mean = ops.concatenate([batch[s.latent_mean] for s in streams], axis=0)
        return mean, ops.concatenate([batch[s.latent_logvar] for s in streams], axis=0)
    pixels = ops.concatenate([batch[s.pixels] for s in streams], axis=0)
    return vae_encoder(pixels, training=False)


def dreambooth_loss(unet, vae_encoder, schedule: NoiseSchedule, batch, randomness, settings: LossSettings, text_encoder=None):
    """(loss, {"instance_loss", "prior_loss"}) for this replica, each already / global batch.

    `batch` holds this replica's instance (and, with prior preservation, class)
    examples; instance i is paired with class i. Summed over replicas, the
    three values are the global-batch means. Instance and class examples go
    through the VAE (skipped for cached latents) and the UNet as one batch. With `text_encoder` (trained too)
    the context is encoded from the token ids instead of read from the records.
    `randomness` comes from `draw_randomness`.
    """
    streams = _streams(batch)
    if text_encoder is None:
        context = ops.concatenate([batch[s.embedding] for s in streams], axis=0)
    else:
        context = text_encoder(ops.concatenate([batch[s.token_ids] for s in streams], axis=0), training=True)

    mean, log_variance = _posterior(vae_encoder, batch, streams)
    mean, log_variance = ops.cast(mean, "float32"), ops.cast(log_variance, "float32")
    latents = ops.stop_gradient(sample_latents(mean, log_variance, randomness["vae_noise"], settings.scaling_factor))
    noise, t = randomness["noise"], randomness["timesteps"]
    noisy = schedule.add_noise(latents, noise, t)
    prediction = unet([noisy, timestep_embedding(t, settings.time_embedding_dim), context], training=True)
    errors = _per_example_mse(prediction, schedule.training_target(latents, noise, t))

    batch_size = ops.shape(batch[features.EXAMPLE_POSITION])[0]
    instance_loss = ops.sum(errors[:batch_size]) / settings.global_batch_size
    prior_loss = ops.sum(errors[batch_size:]) / settings.global_batch_size if len(streams) > 1 else tf.zeros([])
    loss = instance_loss + settings.prior_loss_weight * prior_loss
    return loss, {"instance_loss": instance_loss, "prior_loss": prior_loss}
