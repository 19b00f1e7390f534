"""Feeds each replica its share of every global batch through `distribute_datasets_from_function`."""

import tensorflow as tf

from dbdist.data.reader import make_train_dataset
from dbdist.errors import UserError


def per_replica_batch_size(global_batch, num_replicas):
    if global_batch % num_replicas:
        raise UserError(
            f"global_batch_size {global_batch} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas}"
        )
    return global_batch // num_replicas


def distributed_dataset(strategy, data_dir, manifest, *, global_batch, seed, start_step=0, augmentation=None,
                        noise=None):
    """A distributed dataset whose replica r gets global-batch positions [r*B, (r+1)*B) each step.

    `noise` (a `NoiseSpec`): each example's randomness, drawn in the pipeline (dbdist/data/example_noise.py).
    """
    replicas = strategy.num_replicas_in_sync
    batch = per_replica_batch_size(global_batch, replicas)

    def dataset_fn(context: tf.distribute.InputContext):
        # One input pipeline per worker serves that worker's replicas in turn (element k
        # goes to local replica k % local), so one dataset that reads the shards once
        # yields each local replica's batch in that order.
        local = replicas // context.num_input_pipelines
        dataset = make_train_dataset(
            data_dir,
            manifest,
            per_replica_batch=batch,
            seed=seed,
            global_batch=global_batch,
            replica_id=context.input_pipeline_id * local,
            local_replicas=local,
            start_step=start_step,
            noise=noise,
            **({"augmentation": augmentation} if augmentation else {}),
        )
        return dataset.prefetch(2 * local)

    return strategy.distribute_datasets_from_function(dataset_fn)
