"""Each process reads its own share of every global batch with tf.data (the step never sees TensorFlow).

Process p of P reads global-batch positions [p * G/P, (p + 1) * G/P) through the shared reader
(the same positions, augmentation and noise keys as the TF engine's replicas), K micro-batches
at a time; mesh.global_batch then makes the global arrays the jitted step takes.
"""

import jax
import tensorflow as tf
from absl import logging

from dbdist.data.reader import make_train_dataset


def keep_tensorflow_off_accelerators():
    """tf.data runs on the host: TensorFlow must not claim the GPUs' memory that JAX uses."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # TensorFlow already started its devices
        logging.warning("TensorFlow already holds its GPUs (%s); JAX may have less GPU memory", err)


def local_batches(data_dir, manifest, *, global_batch, grad_accum_steps, start_step, **options):
    """Iterator of this process's {key: (grad_accum_steps, G/P, ...)} numpy arrays from optimizer step `start_step`."""
    processes = jax.process_count()
    dataset = make_train_dataset(
        data_dir, manifest, per_replica_batch=global_batch // processes, global_batch=global_batch,
        replica_id=jax.process_index(), local_replicas=1, start_step=start_step * grad_accum_steps, **options,
    )
    # Micro-batches of one optimizer step are consecutive elements: stacked on a leading axis.
    return dataset.batch(grad_accum_steps, drop_remainder=True).prefetch(2).as_numpy_iterator()
