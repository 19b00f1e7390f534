"""The toy VAE's latent rescaling (dbdist/toy/vae_training.py): exact, so pretraining may apply it after training."""

import numpy as np

from dbdist.config import model_config
from dbdist.models import build_models
from dbdist.toy import world
from dbdist.toy.vae_training import latent_std, normalise_latents


def test_normalise_latents_sets_the_std_and_keeps_every_reconstruction():
    config = model_config("toy")
    vae = build_models(config, ("vae_encoder", "vae_decoder"))
    photos = np.stack([p for p, _, _ in world.sample(0, 4)])
    pixels = photos.astype(np.float32) / 127.5 - 1.0

    def reconstruct():
        mean, log_variance = vae.vae_encoder(pixels)
        return np.asarray(vae.vae_decoder(np.asarray(mean) * config.vae.scaling_factor)), np.asarray(log_variance)

    before, log_variance_before = reconstruct()
    std = latent_std(vae.vae_encoder, photos)
    normalise_latents(vae.vae_encoder, vae.vae_decoder, target_std=0.5, current_std=std)
    after, log_variance_after = reconstruct()
    # float32 through two rescaled 1x1 convs: round-off of ~1e-6 relative, far under 1e-4.
    np.testing.assert_allclose(latent_std(vae.vae_encoder, photos), 0.5, rtol=1e-4)
    np.testing.assert_allclose(after, before, atol=1e-4)
    # The posterior's spread scales with the means: log-variance + 2 log c.
    np.testing.assert_allclose(log_variance_after, log_variance_before + 2 * np.log(0.5 / std), atol=1e-4)
