"""The one tf.distribute strategy factory, called once per process."""

import tensorflow as tf
from absl import logging


def split_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices (mirrored runs for real on a laptop).

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


def make_strategy(name, num_cpu_devices=0):
    """A strategy by name. Build every variable inside its `scope()`."""
    if num_cpu_devices:
        split_cpu(num_cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        device = gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
        strategy = tf.distribute.OneDeviceStrategy(device)
    elif name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        raise ValueError(f"strategy {name!r} is not available in this build; use one_device or mirrored")
    logging.info("strategy %s with %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief():
    """Only the chief writes logs, metrics and exports (single-process runs are the chief)."""
    return True
