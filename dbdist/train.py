"""python -m dbdist.train: DreamBooth fine-tuning of the UNet.

How to run (the tiny demo; see README for sd-v1 on a GPU):
  python -m dbdist.train --data_dir=/tmp/db/records --output_dir=/tmp/db/run \
      --model=tiny --max_train_steps=100 --learning_rate=1e-4
What to expect: a progress line per --log_every steps, then in output_dir:
config.json, metrics.jsonl, loss_curve.png and export/unet.h5 (keras-cv layout).
"""

import math
import os
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from dbdist import common_flags
from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig
from dbdist.data.manifest import check_compatible, read_manifest
from dbdist.data.writer import write_bytes_atomically
from dbdist.diffusion import NoiseSchedule
from dbdist.plots import plot_loss_curve
from dbdist.training import input as train_input
from dbdist.training.loss import LossSettings
from dbdist.training.loss_scale import DynamicLossScale
from dbdist.training.metrics_log import MetricsLog, format_duration, read_metrics
from dbdist.training.optimizer import build_optimizer
from dbdist.training.step import TrainState, replica_train_step
from dbdist.training.strategy import is_chief, make_strategy
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5
from dbdist.weights.pretrained import load_networks

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Records made by `python -m dbdist.make_tfrecords` (local or gs://).")
flags.DEFINE_enum("strategy", "one_device", ["one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices (mirrored on a laptop).")
flags.DEFINE_integer("max_train_steps", 400, "Optimisation steps.")
flags.DEFINE_integer("global_batch_size", 1, "Instance examples per step over all replicas; each is paired with one class example.")
flags.DEFINE_float("learning_rate", 5e-6, "AdamW learning rate.")
flags.DEFINE_float("weight_decay", 1e-2, "AdamW decoupled weight decay.")
flags.DEFINE_float("max_grad_norm", 1.0, "Clip the summed gradients to this global norm.")
flags.DEFINE_float("prior_loss_weight", 1.0, "Weight of the class (prior-preservation) loss.")
flags.DEFINE_enum("mixed_precision", "no", ["no", "bf16", "fp16"], "Compute dtype; fp16 uses dynamic loss scaling.")
flags.DEFINE_integer("log_every", 10, "Log metrics every this many steps (and at the last step).")


def _run_config(model):
    return RunConfig(
        model=model,
        data=DataConfig(data_dir=FLAGS.data_dir),
        optim=OptimConfig(
            learning_rate=FLAGS.learning_rate, weight_decay=FLAGS.weight_decay, max_grad_norm=FLAGS.max_grad_norm
        ),
        train=TrainConfig(
            output_dir=FLAGS.output_dir,
            max_train_steps=FLAGS.max_train_steps,
            global_batch_size=FLAGS.global_batch_size,
            prior_loss_weight=FLAGS.prior_loss_weight,
            seed=FLAGS.seed,
            log_every=FLAGS.log_every,
        ),
        runtime=RuntimeConfig(
            strategy=FLAGS.strategy, mixed_precision=FLAGS.mixed_precision, weights=FLAGS.weights
        ),
    ).validate()


def _set_precision(mixed_precision):
    policy = {"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mixed_precision]
    keras.mixed_precision.set_dtype_policy(policy)


def _build_state(config, strategy):
    """Models, optimizer, step and loss scale, all inside the strategy's scope."""
    with strategy.scope():
        # Order: (resume from a checkpoint: not yet) -> pretrained weights (--unet_weights,
        # --weights, published files) -> random init from --seed (tiny only).
        models = load_networks(
            config.model,
            ("unet", "vae_encoder"),
            weights_dir=config.runtime.weights,
            seed=config.train.seed,
            files={"unet": FLAGS.unet_weights} if FLAGS.unet_weights else None,
        )
        models.vae_encoder.trainable = False  # frozen: only the UNet is fine-tuned
        optimizer = build_optimizer(config.optim)
        optimizer.build(models.unet.trainable_variables)
        state = TrainState(
            unet=models.unet,
            vae_encoder=models.vae_encoder,
            optimizer=optimizer,
            schedule=NoiseSchedule(config.model.schedule),
            step=tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
            loss_scale=DynamicLossScale(config.runtime.initial_loss_scale)
            if config.runtime.mixed_precision == "fp16"
            else None,
        )
    return state


def _compiled_step(strategy, state, settings, max_grad_norm):
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def train_step(iterator):
        batch = next(iterator)
        per_replica = strategy.run(replica_train_step, args=(state, batch, settings, max_grad_norm))
        metrics = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        # These two are the same on every replica; the sum counted them `replicas` times.
        metrics["grad_norm"] /= replicas
        metrics["skipped"] /= replicas
        state.step.assign_add(1)
        return metrics

    return train_step


def main(argv):
    del argv
    common_flags.require("data_dir", "output_dir")
    # Stage 1: config.
    manifest = read_manifest(FLAGS.data_dir)
    model = common_flags.selected_model_config(FLAGS.resolution or manifest.resolution)
    check_compatible(
        manifest,
        preset=model.preset,
        resolution=model.resolution,
        embedding_shape=model.embedding_shape,
        data_dir=FLAGS.data_dir,
    )
    config = _run_config(model)
    _set_precision(config.runtime.mixed_precision)
    logging.info("training on %s records: %d instance, %d class", "prior-preservation" if manifest.num_class else "instance-only", manifest.num_instance, manifest.num_class)

    # Stage 2: strategy. Stage 3: data.
    strategy = make_strategy(config.runtime.strategy, FLAGS.num_cpu_devices)
    chief = is_chief()
    if chief:
        tf.io.gfile.makedirs(config.train.output_dir)
        write_bytes_atomically(os.path.join(config.train.output_dir, "config.json"), config.to_json().encode())
    dataset = train_input.distributed_dataset(
        strategy, FLAGS.data_dir, manifest, global_batch=config.train.global_batch_size, seed=config.train.seed
    )

    # Stage 4: models and optimizer.
    state = _build_state(config, strategy)
    settings = LossSettings(
        global_batch_size=config.train.global_batch_size,
        prior_loss_weight=config.train.prior_loss_weight if manifest.num_class else 0.0,
        scaling_factor=config.model.vae.scaling_factor,
        time_embedding_dim=config.model.unet.time_embedding_dim,
        seed=config.train.seed,
    )

    # Stage 5: compile. Stage 6: loop.
    train_step = _compiled_step(strategy, state, settings, config.optim.max_grad_norm)
    iterator = iter(dataset)
    images_per_step = config.train.global_batch_size * (2 if manifest.num_class else 1)
    log = MetricsLog(config.train.output_dir, config.train.max_train_steps, images_per_step) if chief else None
    start = time.perf_counter()
    for step in range(1, config.train.max_train_steps + 1):
        metrics = {k: float(v) for k, v in train_step(iterator).items()}
        if not math.isfinite(metrics["loss"]) and config.runtime.mixed_precision != "fp16":
            raise FloatingPointError(f"non-finite loss {metrics['loss']} at step {step}; stopping (nothing exported)")
        if chief and (step % config.train.log_every == 0 or step == config.train.max_train_steps):
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(state.optimizer.learning_rate))
            log.log(step, metrics)
    logging.info("trained %d steps in %s", config.train.max_train_steps, format_duration(time.perf_counter() - start))

    # Stage 7: export (chief only).
    if chief:
        export_path = os.path.join(config.train.output_dir, "export", "unet.h5")
        save_keras_cv_h5(state.unet, export_path)
        records = read_metrics(os.path.join(config.train.output_dir, "metrics.jsonl"))
        if records:
            plot_loss_curve(records, os.path.join(config.train.output_dir, "loss_curve.png"))
        logging.info("exported %s", export_path)


if __name__ == "__main__":
    app.run(main)
