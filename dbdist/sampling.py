"""Text -> images with a model's networks: tokenize, encode, DDIM with guidance, decode.

Shared by `dbdist.generate` and the trainer's validation images.
"""

import numpy as np

from dbdist.diffusion import NoiseSchedule
from dbdist.diffusion.ddim import ddim_sample, initial_noise, pixels_to_uint8


def _identity(fn):
    return fn


class Sampler:
    """Draws images; `compile` wraps the UNet and decoder calls (e.g. tf.function)."""

    def __init__(self, model_config, networks, tokenizer, compile=_identity):
        self.config = model_config
        self.tokenizer = tokenizer
        self.text_encoder = networks.text_encoder
        self.predict = compile(lambda latents, t_emb, ctx: networks.unet([latents, t_emb, ctx], training=False))
        self.decode = compile(lambda latents: networks.vae_decoder(latents, training=False))
        self.schedule = NoiseSchedule(model_config.schedule)

    def encode(self, prompts):
        """(N, 77, width) embeddings; an empty prompt is the unconditional input, as in keras-cv."""
        length, pad = self.config.text_encoder.max_length, self.config.text_encoder.pad_token_id
        tokens = np.stack([self.tokenizer.tokenize(p, length, pad) for p in prompts])
        return np.asarray(self.text_encoder(tokens, training=False), dtype=np.float32)

    def images(self, prompt, *, num_images, seed, num_steps=50, guidance_scale=7.5, negative_prompt="", batch_size=4, on_batch=None):
        """uint8 (H, W, 3) images; image i depends only on (seed, i)."""
        context, unconditional = self.encode([prompt, negative_prompt])
        pictures = []
        while len(pictures) < num_images:
            count = min(batch_size, num_images - len(pictures))
            noise = initial_noise(
                seed, count, self.config.latent_size, self.config.unet.latent_channels, first_index=len(pictures)
            )
            latents = ddim_sample(
                self.predict,
                noise,
                np.repeat(context[None], count, axis=0),
                np.repeat(unconditional[None], count, axis=0),
                self.schedule,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                time_embedding_dim=self.config.unet.time_embedding_dim,
            )
            pictures.extend(pixels_to_uint8(self.decode(latents)))
            if on_batch:
                on_batch(len(pictures), num_images)
        return pictures
