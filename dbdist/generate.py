"""python -m dbdist.generate: draw images from a (DreamBooth-trained) model.

How to run:
  python -m dbdist.generate --run_dir=/tmp/db/run --prompt="a photo of sks ball on a beach" \
      --num_images=4 --num_steps=50 --guidance_scale=7.5 --seed=0 --output_dir=/tmp/db/samples
What to expect: image_000.png ... and grid.png in output_dir. The same seed gives
the same images; image i depends only on (seed, i), not on --batch_size.
"""

import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dbdist import common_flags
from dbdist.config import model_config, with_resolution
from dbdist.data import images
from dbdist.diffusion import NoiseSchedule
from dbdist.diffusion.ddim import ddim_sample, initial_noise, pixels_to_uint8
from dbdist.text.tokenizer import ClipTokenizer, resolve_vocab_path
from dbdist.training.metrics_log import format_duration
from dbdist.weights.pretrained import load_networks

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", "", "A `dbdist.train` output dir: its preset, weights and export/unet.h5 are used.")
flags.DEFINE_string("prompt", None, 'What to draw, e.g. "a photo of sks dog on the beach".')
flags.DEFINE_string("negative_prompt", "", "Steer away from this; empty uses the empty prompt as the unconditional input.")
flags.DEFINE_integer("num_images", 4, "Images to draw.")
flags.DEFINE_integer("batch_size", 4, "Images denoised together.")
flags.DEFINE_integer("num_steps", 50, "DDIM steps.")
flags.DEFINE_float("guidance_scale", 7.5, "Classifier-free guidance scale (1 = no guidance).")


def _model_and_weights():
    """(model config, weights dir, unet file, seed of tiny's random weights)."""
    if FLAGS.run_dir and FLAGS.unet_weights:
        raise ValueError("pass either --run_dir or --unet_weights, not both")
    if not FLAGS.run_dir:
        return common_flags.selected_model_config(), FLAGS.weights, FLAGS.unet_weights, 0
    config_path = os.path.join(FLAGS.run_dir, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"--run_dir {FLAGS.run_dir} has no config.json; expected a dbdist.train output dir")
    with tf.io.gfile.GFile(config_path) as f:
        run = json.load(f)
    preset = run["model"]["preset"]
    if FLAGS["model"].present and FLAGS.model != preset:
        raise ValueError(f"--model={FLAGS.model} but --run_dir {FLAGS.run_dir} was trained as {preset!r}")
    unet_path = os.path.join(FLAGS.run_dir, "export", "unet.h5")
    if not tf.io.gfile.exists(unet_path):
        raise FileNotFoundError(f"{unet_path} is missing; did training in {FLAGS.run_dir} finish?")
    model = with_resolution(model_config(preset), FLAGS.resolution or run["model"]["resolution"])
    return model, FLAGS.weights or run["runtime"]["weights"], unet_path, run["train"]["seed"]


def main(argv):
    del argv
    common_flags.require("prompt", "output_dir")
    if FLAGS.num_images < 1 or FLAGS.batch_size < 1:
        raise ValueError(f"--num_images and --batch_size must be >= 1, got {FLAGS.num_images}, {FLAGS.batch_size}")
    model, weights_dir, unet_path, init_seed = _model_and_weights()
    tokenizer = ClipTokenizer(resolve_vocab_path(FLAGS.vocab_path))
    length = model.text_encoder.max_length
    tokens = np.stack([tokenizer.tokenize(FLAGS.prompt, length), tokenizer.tokenize(FLAGS.negative_prompt, length)])

    networks = load_networks(
        model,
        ("unet", "vae_decoder", "text_encoder"),
        weights_dir=weights_dir,
        seed=init_seed,
        files={"unet": unet_path} if unet_path else None,
    )
    context, unconditional = networks.text_encoder.predict_on_batch(tokens)
    unet = tf.function(lambda latents, t_emb, ctx: networks.unet([latents, t_emb, ctx], training=False))
    decode = tf.function(lambda latents: networks.vae_decoder(latents, training=False))
    schedule = NoiseSchedule(model.schedule)

    done, start, pictures = 0, time.perf_counter(), []
    while done < FLAGS.num_images:
        count = min(FLAGS.batch_size, FLAGS.num_images - done)
        noise = initial_noise(FLAGS.seed, count, model.latent_size, model.unet.latent_channels, first_index=done)
        latents = ddim_sample(
            unet,
            noise,
            np.repeat(context[None], count, axis=0),
            np.repeat(unconditional[None], count, axis=0),
            schedule,
            num_steps=FLAGS.num_steps,
            guidance_scale=FLAGS.guidance_scale,
            time_embedding_dim=model.unet.time_embedding_dim,
        )
        batch = pixels_to_uint8(decode(latents))
        for image in batch:
            images.save_png(image, os.path.join(FLAGS.output_dir, f"image_{len(pictures):03d}.png"))
            pictures.append(image)
        done += count
        elapsed = time.perf_counter() - start
        rate = done / elapsed
        logging.info(
            "%d/%d images  %.2f img/s  ETA %s", done, FLAGS.num_images, rate, format_duration((FLAGS.num_images - done) / rate)
        )
    grid = images.make_grid(pictures, columns=math.ceil(math.sqrt(len(pictures))))
    images.save_png(grid, os.path.join(FLAGS.output_dir, "grid.png"))
    logging.info("wrote %d images and grid.png to %s", len(pictures), FLAGS.output_dir)


if __name__ == "__main__":
    app.run(main)
