"""Class images for prior preservation, drawn by the base model on every replica of a strategy.

DreamBooth regularises the subject with 100-300 images of its class drawn by the
model before fine-tuning ("a photo of dog"). `fill_class_dir` tops a class folder
up to the number wanted:

- Files are named `class-<index>-<hash of prompt, seed, index, sampler settings, preset>.png`:
  two prompts, seeds or settings cannot collide, and a rerun regenerates only what
  is missing (every image already in the folder, the user's own too, counts).
- Image i starts from noise seeded by the same values as its file name, (prompt, seed,
  steps, guidance, preset) and i, and by nothing else: the images do not depend on the
  batch size, the number of replicas or workers, or on how often the command was
  interrupted. The settings are part of the key because a folder topped up after a
  change of settings draws indices 0, 1, ... again (their names are new): from the
  same noise those would be near-copies of the images already there. (Continuing at
  fresh indices instead would make image i depend on the folder's history.)
- Each file is written under a temporary name and renamed, so a killed run leaves
  no half-written image behind.

One global batch of `global_batch` images is split over the replicas; replica r
draws images [k + r*B, k + (r+1)*B). Each worker writes the images of its own
replicas, so a multi-worker run writes in parallel into a shared (gs://) folder.
"""

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf
from absl import logging

from dbdist.data import images
from dbdist.diffusion import NoiseSchedule
from dbdist.diffusion.ddim import ddim_update, pixels_to_uint8, sampling_timesteps
from dbdist.progress import Progress


@dataclasses.dataclass(frozen=True)
class ClassImageSettings:
    num_steps: int = 50
    guidance_scale: float = 7.5
    global_batch: int = 4     # images per sampler call over all replicas
    seed: int = 0


def _digest(*parts):
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def noise_seed(prompt, settings: ClassImageSettings, preset):
    """A 63-bit seed of the images drawn with these settings, keyed as their file names are:
    two prompts, seeds, step counts, guidance scales or presets do not share starting noise."""
    return int(_digest("class-noise", prompt, settings.seed, settings.num_steps, settings.guidance_scale,
                       preset)[:15], 16)


def class_image_name(prompt, index, settings: ClassImageSettings, preset):
    tag = _digest(prompt, settings.seed, index, settings.num_steps, settings.guidance_scale, preset)[:10]
    return f"class-{index:05d}-{tag}.png"


def plan(class_dir, prompt, num_wanted, settings, preset):
    """Indices still to draw so that `class_dir` holds `num_wanted` images (none if it has enough)."""
    existing = set()
    if tf.io.gfile.isdir(class_dir):
        existing = {n.rstrip("/") for n in tf.io.gfile.listdir(class_dir) if images.is_image_name(n)}
    missing, index = [], 0
    while len(existing) + len(missing) < num_wanted:
        if class_image_name(prompt, index, settings, preset) not in existing:
            missing.append(index)
        index += 1
    return missing


def initial_noise(prompt, settings, preset, indices, shape):
    """(len(indices),) + shape starting latents; image i depends only on `noise_seed(...)` and i."""
    base = noise_seed(prompt, settings, preset)
    return np.stack([np.random.default_rng([base, int(i)]).standard_normal(shape) for i in indices]).astype("float32")


class DistributedSampler:
    """Guided DDIM + decoding, one `strategy.run` per denoising step, on every replica."""

    def __init__(self, strategy, model_config, networks, settings: ClassImageSettings):
        self.strategy, self.config, self.settings = strategy, model_config, settings
        self.schedule = NoiseSchedule(model_config.schedule)
        unet, decoder = networks.unet, networks.vae_decoder
        predict = lambda latents, t_emb, ctx: unet([latents, t_emb, ctx], training=False)
        v_prediction = model_config.schedule.prediction_type == "v_prediction"
        embedding_dim = model_config.unet.time_embedding_dim

        def replica_step(latents, contexts, t, a_t, a_prev):
            return ddim_update(predict, latents, contexts, t, a_t, a_prev, settings.guidance_scale,
                               time_embedding_dim=embedding_dim, v_prediction=v_prediction)

        # Compiled once: the timestep and alphas are tensors, not constants of the trace.
        self._step = tf.function(lambda *args: strategy.run(replica_step, args=args))
        self._decode = tf.function(lambda latents: strategy.run(lambda x: decoder(x, training=False), args=(latents,)))

    def _per_replica(self, array):
        """Splits a global (G, ...) numpy array into per-replica slices of G / replicas."""
        share = array.shape[0] // self.strategy.num_replicas_in_sync
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * share:(ctx.replica_id_in_sync_group + 1) * share]))

    def draw(self, noise, unconditional, conditional, indices):
        """{global index: uint8 image} of this worker's replicas.

        `noise` (G, h, w, c) starting latents, `unconditional`/`conditional` (L, D) the
        prompt embeddings every image shares, `indices` (G,) the images' indices (-1 marks padding).
        """
        latents = self._per_replica(noise)
        # Every replica denoises its share against [unconditional; conditional] of that share.
        share = noise.shape[0] // self.strategy.num_replicas_in_sync
        contexts = np.concatenate([np.repeat(unconditional[None], share, 0), np.repeat(conditional[None], share, 0)])
        contexts = self.strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(contexts))
        ids = self._per_replica(indices)
        alphas = self.schedule.alphas_cumprod
        timesteps = sampling_timesteps(self.settings.num_steps, self.schedule.num_train_timesteps)
        for i, t in enumerate(timesteps):
            a_prev = float(alphas[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            latents = self._step(latents, contexts, tf.constant(int(t), tf.int32),
                                 tf.constant(float(alphas[t]), tf.float32), tf.constant(a_prev, tf.float32))
        pixels = self._decode(latents)
        local = self.strategy.experimental_local_results
        out = {}
        for replica_pixels, replica_ids in zip(local(pixels), local(ids)):
            for image, index in zip(pixels_to_uint8(replica_pixels), np.asarray(replica_ids)):
                if index >= 0:
                    out[int(index)] = image
        return out


def fill_class_dir(sampler, job, missing, encode, *, preset):
    """Draws the images `missing` (from `plan`) of `job` (a Concept: class_dir, class_prompt)
    into its folder.

    `encode(prompts)` gives (N, L, D) text embeddings. Every worker calls this with the
    same job and plan; each writes the images of its own replicas.
    """
    settings = sampler.settings
    logging.info("drawing %d class images of %r into %s", len(missing), job.class_prompt, job.class_dir)
    tf.io.gfile.makedirs(job.class_dir)
    unconditional, conditional = encode(["", job.class_prompt])
    shape = (sampler.config.latent_size, sampler.config.latent_size, sampler.config.unet.latent_channels)
    batch, progress = settings.global_batch, Progress(len(missing), "class images", every_s=0)
    for first in range(0, len(missing), batch):
        chunk = missing[first:first + batch]
        padded = chunk + [-1] * (batch - len(chunk))  # the last batch keeps its compiled shape
        noise = initial_noise(job.class_prompt, settings, preset, [max(i, 0) for i in padded], shape)
        drawn = sampler.draw(noise, unconditional, conditional, np.asarray(padded, np.int64))
        for index, image in drawn.items():
            images.save_png(image, os.path.join(job.class_dir, class_image_name(job.class_prompt, index, settings, preset)))
        progress(len(chunk))
