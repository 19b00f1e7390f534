"""Times dbdist's train step and input pipeline: step time, images/s, records/s.

  python benchmarks/train_step.py --model=tiny --strategy=one_device --global_batch_size=2
  python benchmarks/train_step.py --all   # the matrix below, one fresh process per row

Each row builds synthetic records (random images, zero text embeddings) at the
preset's (or --resolution) size, builds the models inside the strategy, runs
--warmup loops (tracing and compilation, reported apart), then times --steps
steps. The input pipeline is timed alone, without training. Prints one JSON
line per row.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "tiny", "Preset.")
flags.DEFINE_integer("resolution", 0, "Image size (0: the preset's).")
flags.DEFINE_string("strategy", "one_device", "one_device | mirrored.")
flags.DEFINE_integer("num_cpu_devices", 0, "Logical CPU devices (mirrored on a CPU).")
flags.DEFINE_integer("global_batch_size", 2, "Instance examples per step (each paired with a class example).")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("steps_per_loop", 5, "Steps per compiled loop.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the per-replica step.")
flags.DEFINE_string("mixed_precision", "no", "no | bf16 | fp16.")
flags.DEFINE_integer("lora_rank", 0, "Train rank-R LoRA adapters on the UNet's attention instead of the UNet (0: full fine-tuning).")
flags.DEFINE_bool("all", False, "Run the CPU matrix in subprocesses.")

MATRIX = [
    dict(model="tiny", strategy="one_device"),
    dict(model="tiny", strategy="one_device", jit_compile=True),
    dict(model="tiny", strategy="mirrored", num_cpu_devices=2),
    dict(model="sd-v1", resolution=64, strategy="one_device", global_batch_size=1, steps=3, steps_per_loop=1),
    dict(model="sd-v1", resolution=64, strategy="one_device", global_batch_size=1, steps=3, steps_per_loop=1, lora_rank=4),
]


def _write_records(directory, model, count=16):
    import numpy as np

    from dbdist.data import features, writer
    from dbdist.data.manifest import ConceptCounts, Manifest, write_manifest

    rng = np.random.default_rng(0)
    length, width = model.embedding_shape
    shards = {}
    with writer.ShardWriter(directory, "prompts", 2**30) as out:
        out.write(features.serialize_prompt(prompt_id=0, prompt="a photo", token_ids=np.full((length,), 49407),
                                            embedding=np.zeros((length, width), np.float32)))
        shards["prompts"] = out.close()
    for kind, name in ((features.KIND_INSTANCE, "instance"), (features.KIND_CLASS, "class")):
        with writer.ShardWriter(directory, name, 2**30) as out:
            for i in range(count):
                out.write(features.serialize_example(
                    image=rng.integers(0, 255, (model.resolution, model.resolution, 3), dtype=np.uint8),
                    prompt_id=0, kind=kind, index=i, source=f"{i}.png"))
            shards[name] = out.close()
    write_manifest(directory, Manifest(
        preset=model.preset, resolution=model.resolution, embedding_shape=model.embedding_shape, max_length=length,
        num_instance=count, num_class=count, concepts=(ConceptCounts(
            instance_prompt="a photo", class_prompt="a photo", instance_dir="", class_dir="", num_instance=count,
            num_class=count),),
        instance_shards=shards["instance"], class_shards=shards["class"], prompt_shards=shards["prompts"],
        num_prompts=1, created_by="benchmark",
    ))


def _one_row():
    import resource

    import keras
    import numpy as np
    import tensorflow as tf

    from dbdist.config import OptimConfig, model_config, with_resolution
    from dbdist.data.manifest import read_manifest
    from dbdist.data.example_noise import NoiseSpec
    from dbdist.data.reader import make_train_dataset
    from dbdist.diffusion import NoiseSchedule
    from dbdist.diffusion.dreambooth_loss import LossSettings
    from dbdist.lora.adapters import add_adapters
    from dbdist.models import build_models
    from dbdist.training import input as train_input
    from dbdist.training.loop import make_train_loop
    from dbdist.training.optimizer import build_optimizer
    from dbdist.training.step import TrainState
    from dbdist.training.strategy import make_strategy

    strategy = make_strategy(FLAGS.strategy, FLAGS.num_cpu_devices)
    keras.mixed_precision.set_dtype_policy({"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[FLAGS.mixed_precision])
    model = with_resolution(model_config(FLAGS.model), FLAGS.resolution or None)
    data_dir = tempfile.mkdtemp(prefix="dbdist-bench-")
    _write_records(data_dir, model)
    manifest = read_manifest(data_dir)

    # The input pipeline alone: records/s the trainer could be fed, with each example's noise.
    noise = NoiseSpec(latent_shape=(model.latent_size, model.latent_size, model.vae.latent_channels))
    dataset = make_train_dataset(data_dir, manifest, per_replica_batch=FLAGS.global_batch_size, seed=0, noise=noise)
    iterator = iter(dataset)
    next(iterator)
    start, batches = time.perf_counter(), 200
    for _ in range(batches):
        next(iterator)
    records_per_sec = batches * FLAGS.global_batch_size * 2 / (time.perf_counter() - start)

    with strategy.scope():
        models = build_models(model, ("unet", "vae_encoder"))
        models.vae_encoder.trainable = False
        if FLAGS.lora_rank:
            add_adapters(models.unet, "unet", model, FLAGS.lora_rank)
        optimizer = build_optimizer(OptimConfig())
        optimizer.build(models.unet.trainable_variables)
        state = TrainState(models.unet, models.vae_encoder, optimizer, NoiseSchedule(), tf.Variable(0, dtype=tf.int64))
    settings = LossSettings(FLAGS.global_batch_size, 1.0, model.vae.scaling_factor, model.unet.time_embedding_dim)
    loop = make_train_loop(strategy, state, settings, max_grad_norm=1.0, jit_compile=FLAGS.jit_compile)
    iterator = iter(train_input.distributed_dataset(
        strategy, data_dir, manifest, global_batch=FLAGS.global_batch_size, seed=0, noise=noise))
    start = time.perf_counter()
    loop(iterator, tf.constant(FLAGS.steps_per_loop))["loss"].numpy()
    compile_seconds = time.perf_counter() - start
    start, done = time.perf_counter(), 0
    while done < FLAGS.steps:
        loop(iterator, tf.constant(FLAGS.steps_per_loop))["loss"].numpy()
        done += FLAGS.steps_per_loop
    step_seconds = (time.perf_counter() - start) / done
    print(json.dumps({
        "model": FLAGS.model, "resolution": model.resolution, "strategy": FLAGS.strategy,
        "replicas": strategy.num_replicas_in_sync, "jit_compile": FLAGS.jit_compile,
        "mixed_precision": FLAGS.mixed_precision, "global_batch_size": FLAGS.global_batch_size,
        "first_loop_seconds": round(compile_seconds, 1), "step_seconds": round(step_seconds, 4),
        "images_per_sec": round(2 * FLAGS.global_batch_size / step_seconds, 2),
        "input_records_per_sec": round(records_per_sec, 1), "lora_rank": FLAGS.lora_rank,
        "trainable_parameters": int(sum(np.prod(v.shape) for v in models.unet.trainable_variables)),
        # The process's peak resident memory (Linux reports KiB): weights, optimizer state, activations.
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }), flush=True)


def main(argv):
    del argv
    if not FLAGS.all:
        _one_row()
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for row in MATRIX:
        argv = [sys.executable, os.path.join(here, "train_step.py")] + [f"--{k}={v}" for k, v in row.items()]
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(here)})
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({**row, "error": result.stderr[-500:]}), flush=True)


if __name__ == "__main__":
    app.run(main)
