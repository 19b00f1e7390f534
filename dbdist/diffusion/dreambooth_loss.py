"""The DreamBooth loss on one replica's (or device's) share of the global batch: keras.ops only, any engine.

loss = mean instance MSE + prior_loss_weight * mean class (prior) MSE, where
each mean is over the GLOBAL batch: per-example losses are summed on the
replica and divided by the global batch size, so that summing gradients over
replicas gives exactly the one-device gradient.

With `snr_gamma`, each instance example's MSE is weighted by min-SNR-gamma
(Hang et al. 2023, https://arxiv.org/abs/2303.09556), as diffusers'
examples/dreambooth/train_dreambooth.py does: the prior (class) loss stays unweighted.

Every random number (VAE-sampling noise, diffusion noise, timestep) comes with
the batch, drawn per example by the input pipeline (dbdist/data/example_noise.py),
so both engines and every device split consume the same numbers.
"""

import collections
import dataclasses
from typing import Optional

from keras import ops

from dbdist.data import batch_keys as keys
from dbdist.diffusion.latents import sample_latents
from dbdist.diffusion.schedule import NoiseSchedule, timestep_embedding

_Stream = collections.namedtuple(
    "_Stream", "pixels latent_mean latent_logvar embedding token_ids vae_noise noise timestep"
)
_INSTANCE = _Stream(
    keys.INSTANCE_PIXELS, keys.INSTANCE_LATENT_MEAN, keys.INSTANCE_LATENT_LOGVAR, keys.INSTANCE_EMBEDDING,
    keys.INSTANCE_TOKEN_IDS, keys.INSTANCE_VAE_NOISE, keys.INSTANCE_NOISE, keys.INSTANCE_TIMESTEP,
)
_CLASS = _Stream(
    keys.CLASS_PIXELS, keys.CLASS_LATENT_MEAN, keys.CLASS_LATENT_LOGVAR, keys.CLASS_EMBEDDING,
    keys.CLASS_TOKEN_IDS, keys.CLASS_VAE_NOISE, keys.CLASS_NOISE, keys.CLASS_TIMESTEP,
)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    # Instance examples per optimizer step over all replicas (global batch x accumulation steps).
    global_batch_size: int
    prior_loss_weight: float
    scaling_factor: float
    time_embedding_dim: int
    # min-SNR-gamma weighting of the instance loss; None: plain MSE.
    snr_gamma: Optional[float] = None


def _per_example_mse(prediction, target):
    # In fp32 whatever the compute dtype: bf16/fp16 squares lose too much.
    error = ops.cast(prediction, "float32") - ops.cast(target, "float32")
    return ops.mean(ops.square(error), axis=(1, 2, 3))


def min_snr_weights(schedule: NoiseSchedule, timesteps, gamma):
    """min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for v-prediction, per example.

    diffusers' maths (training_utils.compute_snr; the v-prediction divisor as fixed in
    huggingface/diffusers#8466). The paper weights the x_0 error by min(SNR, gamma); an
    epsilon error is SNR x the x_0 error and a v error (SNR + 1) x it, hence the divisors.
    """
    snr = schedule.snr(timesteps)
    divisor = snr + 1.0 if schedule.config.prediction_type == "v_prediction" else snr
    return ops.minimum(snr, gamma) / divisor


def _streams(batch):
    has_class = keys.CLASS_EMBEDDING in batch
    return [_INSTANCE, _CLASS] if has_class else [_INSTANCE]


def _joined(batch, streams, field):
    """Instance rows then class rows of one field: they go through the networks as one batch."""
    return ops.concatenate([batch[getattr(s, field)] for s in streams], axis=0)


def _posterior(vae_encoder, batch, streams):
    """(mean, log-variance) of the VAE posterior: cached in latent records, else encoded now."""
    if keys.INSTANCE_LATENT_MEAN in batch:
        return _joined(batch, streams, "latent_mean"), _joined(batch, streams, "latent_logvar")
    return vae_encoder(_joined(batch, streams, "pixels"), training=False)


def dreambooth_loss(unet, vae_encoder, schedule: NoiseSchedule, batch, settings: LossSettings, text_encoder=None):
    """(loss, {"instance_loss", "prior_loss"}) for this replica, each already / global batch.

    `batch` holds this replica's instance (and, with prior preservation, class)
    examples and their randomness (the *_VAE_NOISE, *_NOISE, *_TIMESTEP keys);
    instance i is paired with class i. Summed over replicas, the three values are
    the global-batch means. Instance and class examples go through the VAE (skipped
    for cached latents) and the UNet as one batch. With `text_encoder` (trained too)
    the context is encoded from the token ids instead of read from the records.
    """
    streams = _streams(batch)
    if text_encoder is None:
        context = _joined(batch, streams, "embedding")
    else:
        context = text_encoder(_joined(batch, streams, "token_ids"), training=True)

    mean, log_variance = _posterior(vae_encoder, batch, streams)
    mean, log_variance = ops.cast(mean, "float32"), ops.cast(log_variance, "float32")
    vae_noise = ops.cast(_joined(batch, streams, "vae_noise"), "float32")
    latents = ops.stop_gradient(sample_latents(mean, log_variance, vae_noise, settings.scaling_factor))
    noise = ops.cast(_joined(batch, streams, "noise"), "float32")
    t = _joined(batch, streams, "timestep")
    noisy = schedule.add_noise(latents, noise, t)
    prediction = unet([noisy, timestep_embedding(t, settings.time_embedding_dim), context], training=True)
    errors = _per_example_mse(prediction, schedule.training_target(latents, noise, t))

    batch_size = ops.shape(batch[keys.INSTANCE_TIMESTEP])[0]
    instance_errors = errors[:batch_size]
    if settings.snr_gamma is not None:
        instance_errors = instance_errors * min_snr_weights(schedule, t[:batch_size], settings.snr_gamma)
    instance_loss = ops.sum(instance_errors) / settings.global_batch_size
    prior_loss = ops.sum(errors[batch_size:]) / settings.global_batch_size if len(streams) > 1 else ops.zeros(())
    loss = instance_loss + settings.prior_loss_weight * prior_loss
    return loss, {"instance_loss": instance_loss, "prior_loss": prior_loss}
