"""python -m dbdist.demo: DreamBooth learning a subject, on the toy model, on a CPU, in minutes.

The `toy` preset is a miniature Stable Diffusion trained on the toy world (dbdist/toy/):
balls and boxes in five colours, plain, striped or dotted, on four backgrounds. Its base
model never draws a ball striped red and *white*; the demo teaches it one:
  1. 4 photos of the subject (images/sks/), on different backgrounds;
  2. make_tfrecords draws the class images "a photo of a ball" with the base model
     (--num_class_images) and writes the records;
  3. train fine-tunes the UNet on "a photo of a sks ball" with prior preservation, and the token
     embedding of "sks" alone in the text encoder (pivotal tuning): pretraining never saw that
     word, and a class prompt whose text encoding stays as it was keeps drawing ordinary balls;
  4. evaluate draws and judges the subject on every background, the class prompt and
     the base prompts (dbdist/toy/judge.py reads each image's pixels).
Ends with
  <output_dir>/grid.png                 rows: the subject on each background, then the class prompt
  <output_dir>/run/loss_curve.png       the training loss
  <output_dir>/eval/evaluation.json     the evaluation table (also printed)
No network: the toy weights ship with dbdist (or --weights=DIR, made by dbdist.toy.pretrain).
The CLIP vocabulary is taken from --vocab_path, else from ../shared/data next to a dbdist checkout, else Keras' cache,
else downloaded once (as keras-cv does).
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import flags, logging
from PIL import Image

from dbdist import common_flags, errors
from dbdist.data import images
from dbdist.text.tokenizer import VOCAB_FILENAME
from dbdist.toy import scores, world

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("output_dir", "vocab_path", "weights"):
    flags.declare_key_flag(_shared_flag)

FLAGS = flags.FLAGS
flags.DEFINE_integer("demo_train_steps", 600, "DreamBooth training steps (batch 4 + 4 class images).")
flags.DEFINE_enum(
    "demo_text_encoder", "identifier", ["identifier", "all", "none"],
    "What of the text encoder trains beside the UNet: identifier = only the token embedding of 'sks' (pivotal "
    "tuning, train --train_token_embeddings=sks), all = all of it (--train_text_encoder), none = nothing. "
    "Measured (README.md): identifier keeps the class prompt's balls ordinary; all at train's default rate (5e-6) and "
    "none let the subject leak into them; all at 5e-4 keeps them but moves the colour and background words.")
flags.DEFINE_float("demo_text_encoder_learning_rate", 5e-3,
                   "The text encoder's learning rate (the UNet's is 2e-4). 5e-3 suits --demo_text_encoder=identifier, "
                   "one row of the token table; train's default, 5e-6, suits all.")
flags.DEFINE_integer("demo_sampling_steps", 25, "DDIM steps when drawing class and evaluation images.")
flags.DEFINE_integer("demo_class_images", 32, "Class images drawn by the base model (--num_class_images).")
flags.DEFINE_integer("demo_eval_images", 16, "Images per prompt in the evaluation.")
flags.DEFINE_float("demo_prior_loss_weight", 1.0, "Weight of the prior-preservation loss (0: without it).")

INSTANCE_PROMPT, CLASS_PROMPT = scores.DEMO_INSTANCE_PROMPT, scores.DEMO_CLASS_PROMPT
IDENTIFIER = "sks"  # the rare word of INSTANCE_PROMPT that names the subject
GRID_COLUMNS = 4
# Guidance against the toy model's unconditional prompt ("a photo"): a small model's samples
# follow their prompt better with some guidance, while SD's 7.5 over-saturates its flat colours.
EVAL_GUIDANCE_SCALE = 3.0


def _find_vocab():
    candidates = [
        pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / VOCAB_FILENAME,
        pathlib.Path.home() / ".keras" / "datasets" / VOCAB_FILENAME,
    ]
    for path in candidates:
        if path.exists():
            return str(path)
    return ""  # the commands download keras-cv's copy


def _run(module, **flags_):
    argv = [sys.executable, "-m", module] + [f"--{k}={v}" for k, v in flags_.items()]
    logging.info("$ %s", " ".join(argv[1:]))
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    logging.info("%s took %.0f s", module, time.perf_counter() - start)


def _first_row(grid_path, count):
    """The first `count` 64 px images of one of evaluate's grids."""
    with Image.open(grid_path) as grid:
        pixels = np.asarray(grid.convert("RGB"))
    size = world.SIZE
    return [pixels[:size, i * size:(i + 1) * size] for i in range(count)]


def write_demo_grid(eval_dir, path):
    """Rows: the subject on each background, then the class prompt's images (GRID_COLUMNS each)."""
    rows = [f"recontext-{bg}.png" for bg in world.BACKGROUNDS] + ["class.png"]
    pictures = [p for name in rows for p in _first_row(os.path.join(eval_dir, name), GRID_COLUMNS)]
    images.save_png(images.make_grid(pictures, columns=GRID_COLUMNS), path)


def main(argv):
    del argv
    out = common_flags.OUTPUT_DIR.value or "demo_out"
    vocab = common_flags.VOCAB_PATH.value or _find_vocab()
    weights = common_flags.WEIGHTS.value  # "" = the toy weights shipped in dbdist/toy/weights/
    instance_dir = os.path.join(out, "images", "sks")
    for i, photo in enumerate(world.subject_photos(seed=0, count=4)):
        images.save_png(photo, os.path.join(instance_dir, f"sks-{i}.png"))
    _run(
        "dbdist.make_tfrecords",
        model="toy",
        weights=weights,
        instance_dir=instance_dir,
        instance_prompt=INSTANCE_PROMPT,
        class_dir=os.path.join(out, "images", "ball"),
        class_prompt=CLASS_PROMPT,
        num_class_images=FLAGS.demo_class_images,
        class_num_steps=FLAGS.demo_sampling_steps,
        # The toy model's unconditional prompt is "a photo", not the "" class images are guided
        # against, so they are drawn unguided, as the base model's plain conditional samples.
        class_guidance_scale=1.0,
        class_batch_size=8,
        cache_latents=True,
        output_dir=os.path.join(out, "records"),
        vocab_path=vocab,
    )
    _run(
        "dbdist.train",
        model="toy",
        weights=weights,
        data_dir=os.path.join(out, "records"),
        output_dir=os.path.join(out, "run"),
        max_train_steps=FLAGS.demo_train_steps,
        global_batch_size=4,
        learning_rate=2e-4,
        train_text_encoder=FLAGS.demo_text_encoder == "all",
        train_token_embeddings=IDENTIFIER if FLAGS.demo_text_encoder == "identifier" else "",
        text_encoder_learning_rate=FLAGS.demo_text_encoder_learning_rate,
        vocab_path=vocab,
        prior_loss_weight=FLAGS.demo_prior_loss_weight,
        log_every=10,
        checkpoint_every=FLAGS.demo_train_steps,
    )
    _run(
        "dbdist.evaluate",
        run_dir=os.path.join(out, "run"),
        weights=weights,
        num_images=max(FLAGS.demo_eval_images, GRID_COLUMNS),
        num_steps=FLAGS.demo_sampling_steps,
        guidance_scale=EVAL_GUIDANCE_SCALE,
        output_dir=os.path.join(out, "eval"),
        vocab_path=vocab,
    )
    write_demo_grid(os.path.join(out, "eval"), os.path.join(out, "grid.png"))
    logging.info("done: %s, %s and %s", os.path.join(out, "grid.png"), os.path.join(out, "run", "loss_curve.png"),
                 os.path.join(out, "eval", "evaluation.json"))


if __name__ == "__main__":
    errors.run(main)
