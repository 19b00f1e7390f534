"""python -m dbdist.demo: the whole DreamBooth flow on the tiny preset, on a CPU, in minutes.

Writes sample images (a red-and-white striped ball as the subject, plain
balls as the class), then runs the three real commands one after another:
make_tfrecords -> train -> generate. Ends with
  <output_dir>/run/loss_curve.png      the training loss
  <output_dir>/samples/grid.png        images drawn from the trained model
No network and no weights: tiny is random-initialised. The CLIP vocabulary
is taken from --vocab_path, else from ../shared/data next to a dbdist
checkout, else Keras' cache, else downloaded once (as keras-cv does).
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import os
import pathlib
import subprocess
import sys
import time

from absl import flags, logging

from dbdist import common_flags, errors
from dbdist.demo_images import write_demo_images
from dbdist.text.tokenizer import VOCAB_FILENAME

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("output_dir", "vocab_path"):
    flags.declare_key_flag(_shared_flag)

FLAGS = flags.FLAGS
flags.DEFINE_integer("demo_train_steps", 150, "Training steps (tiny model, batch 2).")
flags.DEFINE_integer("demo_sampling_steps", 25, "DDIM steps when sampling.")


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


def main(argv):
    del argv
    out = common_flags.OUTPUT_DIR.value or "demo_out"
    vocab = common_flags.VOCAB_PATH.value or _find_vocab()
    write_demo_images(os.path.join(out, "images", "sks"), os.path.join(out, "images", "ball"), num_instance=4, num_class=8)
    _run(
        "dbdist.make_tfrecords",
        model="tiny",
        instance_dir=os.path.join(out, "images", "sks"),
        instance_prompt="a photo of sks ball",
        class_dir=os.path.join(out, "images", "ball"),
        class_prompt="a photo of ball",
        output_dir=os.path.join(out, "records"),
        vocab_path=vocab,
    )
    _run(
        "dbdist.train",
        model="tiny",
        data_dir=os.path.join(out, "records"),
        output_dir=os.path.join(out, "run"),
        strategy="one_device",
        max_train_steps=FLAGS.demo_train_steps,
        global_batch_size=2,
        learning_rate=1e-3,
        log_every=10,
    )
    _run(
        "dbdist.generate",
        run_dir=os.path.join(out, "run"),
        prompt="a photo of sks ball",
        num_images=4,
        num_steps=FLAGS.demo_sampling_steps,
        output_dir=os.path.join(out, "samples"),
        vocab_path=vocab,
    )
    logging.info("done: %s and %s", os.path.join(out, "run", "loss_curve.png"), os.path.join(out, "samples", "grid.png"))


if __name__ == "__main__":
    errors.run(main)
