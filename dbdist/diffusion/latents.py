"""From the VAE's latent distribution to the latents the UNet is trained on."""

from keras import ops


def sample_latents(mean, log_variance, noise, scaling_factor):
    """Draws z = mean + std * noise and scales it as SD does (x 0.18215).

    The log-variance is clipped to [-30, 20] as in SD's
    `DiagonalGaussianDistribution`, so exp() cannot overflow. `noise` is the
    caller's, so the draw is keyed to each example, not to a replica.
    """
    log_variance = ops.clip(log_variance, -30.0, 20.0)
    return (mean + ops.exp(0.5 * log_variance) * noise) * scaling_factor
