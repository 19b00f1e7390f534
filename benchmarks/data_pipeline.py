"""Times make_tfrecords (images/s, peak memory vs. number of images) and the training input
pipeline (records/s), on synthetic JPEGs.

  python benchmarks/data_pipeline.py                       # 1,000 and 10,000 class images, tiny at 64 px
  python benchmarks/data_pipeline.py --counts=300 --resolution=512 --source_size=768

Each make_tfrecords run is a fresh process (as users run it) whose resident memory is
sampled from /proc every 0.1 s: flat memory means the peak does not grow with the
number of images. The input pipeline is then timed alone on the records made (no
training), with and without random crops and flips. One JSON line per measurement.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_list("counts", ["1000", "10000"], "Numbers of class images, one make_tfrecords run each.")
flags.DEFINE_integer("source_size", 256, "Side of the synthetic source JPEGs (4:3 aspect).")
flags.DEFINE_string("model", "tiny", "Preset whose text encoder (and VAE, with --cache_latents) runs.")
flags.DEFINE_integer("resolution", 0, "Training resolution (0: the preset's).")
flags.DEFINE_bool("cache_latents", False, "Also run the VAE encoder (cached latents).")
flags.DEFINE_float("max_shard_mb", 64, "Shard bound.")
flags.DEFINE_string("vocab_path", os.path.join(REPO, "..", "shared", "data", "bpe_simple_vocab_16e6.txt.gz"), "CLIP vocabulary.")
flags.DEFINE_integer("input_batches", 200, "Batches timed in the input pipeline.")


def _write_sources(folder, count, size, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8)
    for i in range(count):
        # Cheap to make, costly to compress: shifted noise with a gradient.
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(os.path.join(folder, f"img-{i:05d}.jpg"), quality=90)


def _rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return 0.0


def _make_records(instance_dir, class_dir, out):
    argv = [sys.executable, "-m", "dbdist.make_tfrecords", f"--model={FLAGS.model}", f"--instance_dir={instance_dir}",
            "--instance_prompt=a photo of sks dog", f"--class_dir={class_dir}", "--class_prompt=a photo of dog",
            f"--output_dir={out}", f"--vocab_path={FLAGS.vocab_path}", f"--max_shard_mb={FLAGS.max_shard_mb}",
            f"--cache_latents={FLAGS.cache_latents}"] + ([f"--resolution={FLAGS.resolution}"] if FLAGS.resolution else [])
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []
    sampler = threading.Thread(target=lambda: [samples.append(_rss_mb(process.pid)) or time.sleep(0.1)
                                               for _ in iter(lambda: process.poll() is None, False)], daemon=True)
    sampler.start()
    log = process.communicate()[0]
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"make_tfrecords failed:\n{log[-3000:]}")
    rates = re.findall(r"records (\d+)/(\d+)\s+([\d.]+) img/s", log)
    return dict(wall_s=round(time.perf_counter() - start, 1), records_img_per_s=float(rates[-1][2]),
                peak_rss_mb=round(max(samples), 1), rss_samples=len(samples))


def _input_rate(data_dir, **augmentation):
    code = f"""
import json, time
from dbdist.data.augment import Augmentation
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import make_train_dataset
m = read_manifest({data_dir!r})
it = iter(make_train_dataset({data_dir!r}, m, per_replica_batch=8, seed=0, augmentation=Augmentation(**{augmentation!r})))
next(it)
start = time.perf_counter()
for _ in range({FLAGS.input_batches}):
    next(it)
print("RATE", {FLAGS.input_batches} * 8 * 2 / (time.perf_counter() - start))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"RATE ([\d.]+)", out).group(1))


def main(argv):
    del argv
    root = tempfile.mkdtemp(prefix="dbdist-data-bench-")
    instance_dir = os.path.join(root, "instance")
    _write_sources(instance_dir, 5, FLAGS.source_size, seed=1)
    for count in (int(c) for c in FLAGS.counts):
        class_dir = os.path.join(root, f"class-{count}")
        _write_sources(class_dir, count, FLAGS.source_size, seed=2)
        out = os.path.join(root, f"records-{count}")
        row = dict(stage="make_tfrecords", images=count + 5, model=FLAGS.model, resolution=FLAGS.resolution or "preset",
                   source=f"{FLAGS.source_size}x{FLAGS.source_size * 3 // 4} jpeg", cache_latents=FLAGS.cache_latents,
                   cpus=os.cpu_count(), **_make_records(instance_dir, class_dir, out))
        row["shards"] = len([n for n in os.listdir(out) if n.endswith(".tfrecord")])
        row["bytes"] = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
        print(json.dumps(row), flush=True)
        for name, aug in (("centre crop", {}), ("random crop + flip", dict(center_crop=False, random_flip=True))):
            if FLAGS.cache_latents and name != "centre crop":
                aug = dict(random_flip=False)
            print(json.dumps(dict(stage="input pipeline", images=count + 5, augmentation=name,
                                  records_per_s=round(_input_rate(out, **aug)))), flush=True)


if __name__ == "__main__":
    app.run(main)
