"""python -m dbdist.generate: draw images from a (DreamBooth-trained) model.

How to run:
  python -m dbdist.generate --run_dir=/tmp/db/run --prompt="a photo of sks ball on a beach" \
      --num_images=4 --num_steps=50 --guidance_scale=7.5 --seed=0 --output_dir=/tmp/db/samples
What to expect: image_000.png ... and grid.png in output_dir. The same seed gives
the same images; image i depends only on (seed, i), not on --batch_size.
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import math
import os

import tensorflow as tf
from absl import flags, logging

from dbdist import common_flags, errors, run_dir, sampling_flags
from dbdist.data import images
from dbdist.errors import MissingInputError, UserError
from dbdist.gcs_paths import check_buckets
from dbdist.lora.export import apply_lora, read_lora_for
from dbdist.sampling import Sampler
from dbdist.formats.tokenizer_files import command_tokenizer
from dbdist.progress import Progress
from dbdist.weights.fingerprint import check_same_encoders, fingerprints_of, load_fingerprints
from dbdist.weights.pretrained import load_networks

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("model", "resolution", "weights", "unet_weights", "vocab_path", "output_dir", "seed"):
    flags.declare_key_flag(_shared_flag)
flags.adopt_module_key_flags(sampling_flags)  # --run_dir, --num_images, --num_steps, ... (shared with evaluate)

FLAGS = flags.FLAGS
flags.DEFINE_string("prompt", None, 'What to draw, e.g. "a photo of sks dog on the beach".')
flags.DEFINE_integer("batch_size", 4, "Images denoised together.")
flags.DEFINE_string("lora", "", "A LoRA .safetensors (diffusers' or kohya's layout, e.g. a run's export/lora.safetensors) "
                    "added to the UNet (and text encoder); a --run_dir trained with --lora_rank uses its own by default.")
flags.DEFINE_float("lora_scale", 1.0, "Multiplies the LoRA's change to the weights (0: the base model).")


def _model_and_weights():
    """(model config, weights dir, {network: file} overrides, the run's config.json or None)."""
    if FLAGS.run_dir and FLAGS.unet_weights:
        raise UserError("pass either --run_dir or --unet_weights, not both")
    if not FLAGS.run_dir:
        files = {"unet": FLAGS.unet_weights} if FLAGS.unet_weights else {}
        return common_flags.selected_model_config(), FLAGS.weights, files, None
    run = run_dir.read_config(FLAGS.run_dir)
    preset = run["model"]["preset"]
    if FLAGS["model"].present and FLAGS.model != preset:
        raise UserError(f"--model={FLAGS.model} but --run_dir {FLAGS.run_dir} was trained as {preset!r}")
    model = run_dir.trained_model_config(run, FLAGS.resolution)
    weights_dir = FLAGS.weights or run["runtime"]["weights"]
    files = run_dir.exported_files(FLAGS.run_dir)
    if "unet" not in files:
        if run["train"].get("lora_rank"):
            # A LoRA run without --merge_lora: the base networks plus its adapters (see _lora_path).
            return model, weights_dir, {}, run
        unet_path = os.path.join(FLAGS.run_dir, "export", "unet.h5")
        raise MissingInputError(f"{unet_path} is missing; did training in {FLAGS.run_dir} finish?")
    return model, weights_dir, files, run


def _lora_path(run, files):
    """--lora, else a LoRA run's own adapters when its merged export is not what is loaded."""
    if FLAGS.lora or run is None or not run["train"].get("lora_rank") or "unet" in files:
        return FLAGS.lora
    return os.path.join(FLAGS.run_dir, "export", "lora.safetensors")


def _check_run_encoders(run, model, networks, weights_dir, files):
    """Refuses a text encoder / VAE other than the ones that made the run's records (e.g. another --weights)."""
    recorded = dict(run["data"].get("encoder_fingerprints") or {})
    if "text_encoder" in files:
        recorded.pop("text_encoder", None)  # trained (--train_text_encoder, --train_token_embeddings): its own export is the right one
    current = fingerprints_of(networks, [n for n in recorded if n == "text_encoder"])
    current.update(load_fingerprints(model, [n for n in recorded if n != "text_encoder"], weights_dir))
    check_same_encoders(recorded, current, data_dir=f"the records of --run_dir {FLAGS.run_dir}",
                        recorded_weights=run["runtime"]["weights"], current_weights=weights_dir)


def _check_num_steps(num_steps, num_train_timesteps):
    """DDIM spaces its steps over the schedule's training timesteps: more steps than those would repeat some."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise UserError(f"--num_steps={num_steps} is out of range; expected 1 to {num_train_timesteps} "
                        "(the schedule's training timesteps)")


def main(argv):
    del argv
    common_flags.require("prompt", "output_dir")
    check_buckets(output_dir=FLAGS.output_dir, run_dir=FLAGS.run_dir, weights=FLAGS.weights,
                  unet_weights=FLAGS.unet_weights, vocab_path=FLAGS.vocab_path, lora=FLAGS.lora)
    if FLAGS.num_images < 1 or FLAGS.batch_size < 1:
        raise UserError(f"--num_images and --batch_size must be >= 1, got {FLAGS.num_images}, {FLAGS.batch_size}")
    model, weights_dir, files, run = _model_and_weights()
    _check_num_steps(FLAGS.num_steps, model.schedule.num_train_timesteps)
    lora_path = _lora_path(run, files)
    lora = read_lora_for(model, lora_path) if lora_path else None  # checked before any network is built
    tokenizer = command_tokenizer(FLAGS.vocab_path, weights_dir)
    tokenizer.tokenize(FLAGS.prompt, model.text_encoder.max_length)  # a too-long prompt fails before any model is built
    tokenizer.tokenize(FLAGS.negative_prompt, model.text_encoder.max_length)
    networks = load_networks(
        model,
        ("unet", "vae_decoder", "text_encoder"),
        weights_dir=weights_dir,
        files=files,
    )
    if run is not None:
        _check_run_encoders(run, model, networks, weights_dir, files)
    if lora:  # after the check: the records were encoded by the base text encoder
        apply_lora(networks, lora, FLAGS.lora_scale, path=lora_path)
    sampler = Sampler(model, networks, tokenizer, compile=tf.function)
    progress = Progress(FLAGS.num_images, every_s=0)
    pictures = sampler.images(
        FLAGS.prompt,
        num_images=FLAGS.num_images,
        seed=FLAGS.seed,
        num_steps=FLAGS.num_steps,
        guidance_scale=FLAGS.guidance_scale,
        negative_prompt=FLAGS.negative_prompt,
        batch_size=FLAGS.batch_size,
        on_batch=lambda done, total: progress(done - progress.done),
    )
    for i, image in enumerate(pictures):
        images.save_png(image, os.path.join(FLAGS.output_dir, f"image_{i:03d}.png"))
    grid = images.make_grid(pictures, columns=math.ceil(math.sqrt(len(pictures))))
    images.save_png(grid, os.path.join(FLAGS.output_dir, "grid.png"))
    logging.info("wrote %d images and grid.png to %s", len(pictures), FLAGS.output_dir)


if __name__ == "__main__":
    errors.run(main)
