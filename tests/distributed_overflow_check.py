"""Run by tests/test_distributed.py in a fresh process: an fp16 overflow on ONE replica.

Mirrored (2 logical CPUs) when TF_CONFIG is unset, else one replica per worker
process. Replica/worker 1 gets an inf pixel; every replica must skip the step,
keep finite and identical weights, halve the loss scale, and not hang.
Prints one JSON line with what it saw.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

multi_worker = "TF_CONFIG" in os.environ
if multi_worker:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

from dbdist.config import OptimConfig, model_config  # noqa: E402
from dbdist.data import features  # noqa: E402
from dbdist.diffusion import NoiseSchedule  # noqa: E402
from dbdist.diffusion.dreambooth_loss import LossSettings  # noqa: E402
from dbdist.models import build_models  # noqa: E402
from dbdist.training.loop import make_train_loop  # noqa: E402
from dbdist.training.loss_scale import DynamicLossScale  # noqa: E402
from dbdist.training.optimizer import build_optimizer  # noqa: E402
from dbdist.training.step import TrainState  # noqa: E402

with strategy.scope():
    models = build_models(model_config("tiny"), ("unet", "vae_encoder"), seed=0)
    optimizer = build_optimizer(OptimConfig(learning_rate=1e-3))
    optimizer.build(models.unet.trainable_variables)
    state = TrainState(
        unet=models.unet, vae_encoder=models.vae_encoder, optimizer=optimizer, schedule=NoiseSchedule(),
        step=tf.Variable(0, dtype=tf.int64), loss_scale=DynamicLossScale(1024.0),
    )
before = [v.numpy().copy() for v in models.unet.trainable_variables]


def dataset_fn(context):
    replica = context.input_pipeline_id if multi_worker else None
    rng = np.random.default_rng(0)

    def batch(replica_id):
        pixels = np.tanh(rng.normal(size=(1, 64, 64, 3))).astype("float32")
        if replica_id == 1:
            pixels[0, 0, 0, 0] = np.inf  # the overflow, on replica 1 only
        return {
            features.INSTANCE_PIXELS: pixels,
            features.INSTANCE_EMBEDDING: rng.normal(size=(1, 77, 32)).astype("float32"),
            features.EXAMPLE_POSITION: np.array([replica_id], "int32"),
            features.INSTANCE_VAE_NOISE: rng.normal(size=(1, 8, 8, 4)).astype("float32"),
            features.INSTANCE_NOISE: rng.normal(size=(1, 8, 8, 4)).astype("float32"),
            features.INSTANCE_TIMESTEP: np.array([500], "int32"),
        }

    if multi_worker:
        return tf.data.Dataset.from_tensors(batch(replica)).repeat()
    # One pipeline feeds both local replicas in turn.
    return tf.data.Dataset.from_tensor_slices({k: np.stack([batch(0)[k], batch(1)[k]]) for k in batch(0)}).repeat()


dataset = strategy.distribute_datasets_from_function(dataset_fn)
loop = make_train_loop(strategy, state, LossSettings(2, 1.0, 0.18215, 32), max_grad_norm=1.0)
history = loop(iter(dataset), tf.constant(1))
local = [v.values if hasattr(v, "values") else (v,) for v in models.unet.trainable_variables]
replicas_identical = all(all(np.array_equal(c.numpy(), parts[0].numpy()) for c in parts) for parts in local)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "skipped": float(history["skipped"][0]),
    "loss_scale": float(state.loss_scale.scale.numpy()),
    "weights_unchanged": all(np.array_equal(a, v.numpy()) for a, v in zip(before, models.unet.trainable_variables)),
    "replicas_identical": bool(replicas_identical),
    "iterations": int(optimizer.iterations.numpy()),
}))
sys.stdout.flush()
