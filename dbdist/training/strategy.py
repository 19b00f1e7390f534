"""The one tf.distribute strategy factory, called once per process, and who the chief is."""

import json
import os

import tensorflow as tf
from absl import logging

from dbdist.config import TF_STRATEGIES
from dbdist.errors import UserError

STRATEGIES = TF_STRATEGIES


def split_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices, so mirrored runs for real on a laptop.

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


def read_tf_config():
    """The parsed TF_CONFIG, with errors that say what is wrong with it."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        raise UserError("--strategy=multi_worker needs TF_CONFIG (set by Vertex AI, or by hand: see README)")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from err
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"TF_CONFIG has no 'cluster' mapping of job names to host:port lists: {raw[:200]!r}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f"TF_CONFIG needs 'task': {{'type': ..., 'index': ...}}, got {task!r}")
    if task["type"] not in cluster or not 0 <= int(task["index"]) < len(cluster[task["type"]]):
        raise UserError(f"TF_CONFIG task {task} is not in its cluster {cluster}")
    return config


def tpu_cluster_resolver(tpu):
    """The TPUClusterResolver for --tpu, built without touching the TPU.

    --tpu=local: the TPU of this host (a one-host TPU VM, a Vertex AI TPU machine). It must reach
    TensorFlow as "local": TPUClusterResolver(tpu="") is not the local TPU but the Cloud TPU API
    client, which reads the name from $TPU_NAME and raises "Please provide a TPU Name to connect
    to." without it (TensorFlow 2.20 and 2.21, tensorflow/python/distribute/cluster_resolver/tpu/
    tpu_cluster_resolver.py). Any other value is a TPU VM name, whose workers the Cloud TPU API
    lists (projects.locations.nodes.get: the VM's service account needs tpu.nodes.get, e.g.
    roles/tpu.viewer; project and zone come from the VM's metadata server), or grpc://host:8470.
    """
    if not tpu:
        raise UserError("--tpu must be 'local' (this host's TPU), a TPU VM name or grpc://host:8470, got ''")
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)


def _tpu_strategy(tpu):
    try:
        resolver = tpu_cluster_resolver(tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    # OSError: the metadata server or the Cloud TPU API could not be reached (urllib, http clients).
    except (ValueError, tf.errors.OpError, RuntimeError, OSError) as err:
        where = ("this host's TPU (is this a TPU VM or a Vertex AI TPU machine, with no other process holding "
                 "its TPU?)" if tpu == "local" else
                 f"the TPU VM {tpu!r} through the Cloud TPU API (run on its worker 0, whose service account needs "
                 "tpu.nodes.get: roles/tpu.viewer)")
        raise RuntimeError(f"--strategy=tpu could not reach {where}: {err}. On a one-host TPU VM or a Vertex AI TPU "
                           "machine use --tpu=local; see launch/README.md, 'When it goes wrong'.") from err
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name, num_cpu_devices=0, tpu="local"):
    """A strategy by name. Build every variable inside its `scope()`."""
    if name not in STRATEGIES:
        raise UserError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if num_cpu_devices:
        split_cpu(num_cpu_devices)
    if name == "multi_worker":
        # Must come before anything initialises TensorFlow's context (listing devices does).
        read_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("strategy multi_worker with %d replica(s)", strategy.num_replicas_in_sync)
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        device = gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
        strategy = tf.distribute.OneDeviceStrategy(device)
    elif name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = _tpu_strategy(tpu)
    logging.info("strategy %s with %d replica(s)", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy):
    """Only the chief writes logs, metrics and exports. Single-process runs are the chief.

    With TF_CONFIG the chief is the 'chief' task, or worker 0 when the cluster has no
    chief (how Vertex AI and hand-made clusters name it).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_scratch_dir(strategy, path):
    """Where this task writes files that only the chief keeps: `path` on the chief,
    a per-worker temporary directory elsewhere (all workers must take part in saving)."""
    if is_chief(strategy):
        return path
    resolver = strategy.cluster_resolver
    return os.path.join(path, ".workers", f"{resolver.task_type}-{resolver.task_id}")
