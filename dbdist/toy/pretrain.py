"""python -m dbdist.toy.pretrain: trains the `toy` preset's networks on the toy world, from scratch.

How to run (what made the shipped weights; wall time in README.md):
  python -m dbdist.toy.pretrain --output_dir=/tmp/toy_pretrain --install
Stages, each in output_dir:
  1. vae/       the VAE (reconstruction + small KL, dbdist/toy/vae_training.py) on world photos,
                rescaled so its latent means have the std the preset's scaling factor expects;
  2. init/      that VAE plus the seeded random UNet and text encoder (the "scratch" weights);
  3. world/     captioned photos (world-NNNNN.png + .txt) -> records/ by `dbdist.make_tfrecords`;
  4. run/       `dbdist.train --model=toy --weights=init --train_text_encoder`: the product itself
                trains the text encoder and the UNet;
  5. weights/   the four files; --install copies them into dbdist/toy/weights/ (the package data).
Seeded: the same flags give the same photos, batches and noise.
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import flags, logging

from dbdist import common_flags, errors
from dbdist.config import model_config
from dbdist.models import build_models
from dbdist.toy import world
from dbdist.toy.vae_training import latent_std, normalise_latents, train_vae
from dbdist.weights import sources
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5

for _shared_flag in ("output_dir", "vocab_path", "seed"):
    flags.declare_key_flag(_shared_flag)

FLAGS = flags.FLAGS
flags.DEFINE_integer("vae_photos", 2000, "World photos the VAE trains on.")
flags.DEFINE_integer("vae_steps", 3000, "VAE optimisation steps (batch 16 of 32x32 crops).")
flags.DEFINE_integer("world_photos", 3000, "Captioned world photos the text encoder and UNet train on.")
flags.DEFINE_integer("train_steps", 5000, "dbdist.train steps (text encoder + UNet).")
flags.DEFINE_integer("train_batch_size", 32, "dbdist.train --global_batch_size.")
flags.DEFINE_float("train_learning_rate", 1e-3, "dbdist.train learning rate of the UNet and the text encoder.")
flags.DEFINE_float("train_snr_gamma", 5.0, "dbdist.train --snr_gamma: min-SNR loss weighting, which Hang et al. "
                   "(2023, arXiv:2303.09556) measured to converge about 3x faster than the plain loss.")
flags.DEFINE_bool("install", False, "Copy the trained weights into the package (dbdist/toy/weights/).")

_NAMES = {"unet": "unet.h5", "text_encoder": "text_encoder.h5", "vae_encoder": "vae_encoder.h5",
          "vae_decoder": "vae_decoder.h5"}


def _timed(label, started):
    logging.info("%s done at %.0f s", label, time.perf_counter() - started)


def _run(module, **flags_):
    argv = [sys.executable, "-m", module] + [f"--{k}={v}" for k, v in flags_.items()]
    logging.info("$ %s", " ".join(argv[1:]))
    subprocess.run(argv, check=True)


def _train_vae_and_init(config, init, seed):
    # Stage 1: the VAE, on photos that include looks the world never shows (accents), so it
    # can also encode the subjects people fine-tune on.
    photos = np.stack([p for p, _, _ in world.sample(seed + 1, FLAGS.vae_photos, accent_share=0.5)])
    encoder, decoder, l1 = train_vae(config, photos, steps=FLAGS.vae_steps, seed=seed)
    before = latent_std(encoder, photos[:512])
    normalise_latents(encoder, decoder, target_std=1.0 / config.vae.scaling_factor, current_std=before)
    logging.info("VAE: L1 %.4f (pixels in [-1, 1]); latent std %.3f, rescaled to %.3f", l1, before,
                 latent_std(encoder, photos[:512]))

    # Stage 2: the starting weights of the text encoder and UNet: the preset's seeded random draw.
    scratch = build_models(config, ("unet", "text_encoder"), seed=seed)
    for network, model in (("vae_encoder", encoder), ("vae_decoder", decoder),
                           ("unet", scratch.unet), ("text_encoder", scratch.text_encoder)):
        save_keras_cv_h5(model, os.path.join(init, _NAMES[network]))


def main(argv):
    del argv
    common_flags.require("output_dir")
    out, seed = FLAGS.output_dir, FLAGS.seed
    config = model_config("toy")
    started = time.perf_counter()

    # A rerun skips the stages whose results are there (init/ complete, records/manifest.json);
    # dbdist.train resumes from its own checkpoints.
    init = os.path.join(out, "init")
    if all(os.path.exists(os.path.join(init, name)) for name in _NAMES.values()):
        logging.info("%s holds the VAE and the starting weights: stages 1-2 skipped", init)
    else:
        _train_vae_and_init(config, init, seed)
        _timed("VAE", started)

    # Stage 3: captioned records of the world, encoded by the starting text encoder (re-encoded
    # by the trained one at every step, since the text encoder trains).
    if not os.path.exists(os.path.join(out, "records", "manifest.json")):
        world_dir = os.path.join(out, "world")
        world.write_captioned_folder(world_dir, seed + 2, FLAGS.world_photos)
        _run("dbdist.make_tfrecords", model="toy", weights=init, instance_dir=world_dir,
             instance_prompt=world.UNCONDITIONAL, output_dir=os.path.join(out, "records"), cache_latents=True,
             vocab_path=FLAGS.vocab_path, seed=seed)
        _timed("records", started)

    # Stage 4: text encoder and UNet, by the product's own trainer.
    run_dir = os.path.join(out, "run")
    _run("dbdist.train", model="toy", weights=init, data_dir=os.path.join(out, "records"), output_dir=run_dir,
         train_text_encoder=True, max_train_steps=FLAGS.train_steps, global_batch_size=FLAGS.train_batch_size,
         learning_rate=FLAGS.train_learning_rate, text_encoder_learning_rate=FLAGS.train_learning_rate,
         lr_schedule="cosine", lr_warmup_steps=min(100, FLAGS.train_steps // 10), weight_decay=0.0,
         snr_gamma=FLAGS.train_snr_gamma, jit_compile=True, log_every=50, checkpoint_every=500, seed=seed)
    _timed("text encoder + UNet", started)

    # Stage 5: the four files, side by side.
    weights = os.path.join(out, "weights")
    os.makedirs(weights, exist_ok=True)
    for network, source in (("vae_encoder", init), ("vae_decoder", init),
                            ("unet", os.path.join(run_dir, "export")), ("text_encoder", os.path.join(run_dir, "export"))):
        shutil.copyfile(os.path.join(source, _NAMES[network]), os.path.join(weights, _NAMES[network]))
    if FLAGS.install:
        target = sources.PACKAGED["toy"]
        os.makedirs(target, exist_ok=True)
        for name in _NAMES.values():
            shutil.copyfile(os.path.join(weights, name), os.path.join(target, name))
        logging.info("installed into %s", target)
    _timed("pretraining", started)


if __name__ == "__main__":
    errors.run(main)
