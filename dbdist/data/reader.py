"""The training stream: instance (and class) examples as flat batches, independent of replicas.

Each kind is an infinite stream: epoch e is a permutation of its records fixed by
(seed, kind, e) alone. The global batch at step s holds stream positions
[s*G, (s+1)*G); replica r takes [s*G + r*B, s*G + (r+1)*B), and the class example
at position p is paired with the instance example at p. Positions are computed from
the step number, so a global batch is the same whatever the replica split, and
`start_step` resumes exactly without replaying earlier steps.
"""

import os

import numpy as np
import tensorflow as tf

from dbdist.data import features

_INSTANCE_KEYS = (features.INSTANCE_PIXELS, features.INSTANCE_EMBEDDING, features.INSTANCE_TOKEN_IDS)
_CLASS_KEYS = (features.CLASS_PIXELS, features.CLASS_EMBEDDING, features.CLASS_TOKEN_IDS)


def _load_kind(data_dir, manifest, kind_name):
    """Every record of one kind, decoded, as tensors ordered by their `index` field."""
    paths = [os.path.join(str(data_dir), name) for name in manifest.shards(kind_name)]
    expected = manifest.num_examples(kind_name)
    if not paths:
        raise ValueError(f"{data_dir} has no {kind_name} shards (num_{kind_name}={expected})")
    decode = lambda x: features.decode_example(
        x, resolution=manifest.resolution, embedding_shape=manifest.embedding_shape)
    records = tf.data.TFRecordDataset(paths).map(decode)
    # DreamBooth sets are small (a few instance images, a few hundred class images), so
    # everything is decoded once and held in memory as uint8. 'Data at scale' will
    # revisit this (streaming shards, per-host file sharding) for larger sets.
    parts = list(records.batch(1024))
    if not parts:
        raise ValueError(f"{data_dir}: {kind_name} shards {manifest.shards(kind_name)} hold no "
                         f"records; the manifest expects {expected}")
    example = {key: tf.concat([part[key] for part in parts], 0) for key in parts[0]}
    count = int(example["index"].shape[0])
    kind_id = features.KIND_NAMES.index(kind_name)
    order = np.argsort(example["index"].numpy(), kind="stable")
    if count != expected or not np.array_equal(example["index"].numpy()[order], np.arange(count)):
        raise ValueError(f"{data_dir}: {kind_name} shards hold {count} records with indices "
                         f"{sorted(example['index'].numpy().tolist())}; the manifest expects "
                         f"indices 0..{expected - 1}")
    if not np.all(example["kind"].numpy() == kind_id):
        raise ValueError(f"{data_dir}: {kind_name} shards hold records of another kind "
                         f"(kind values {sorted(set(example['kind'].numpy().tolist()))}, expected {kind_id})")
    return {key: tf.gather(value, order) for key, value in example.items()}


def read_all_examples(data_dir, manifest, kind):
    """Every record of `kind` ('instance'/'class' or its KIND_ id) as numpy, ordered by index.

    Keys as `features.decode_example`; "image" is uint8 and "prompt"/"source" are str.
    """
    kind_name = features.KIND_NAMES[int(kind)] if isinstance(kind, (int, np.integer)) else kind
    if kind_name not in features.KIND_NAMES:
        raise ValueError(f"kind must be one of {features.KIND_NAMES} or 0/1, got {kind!r}")
    if manifest.num_examples(kind_name) == 0:
        raise ValueError(f"{data_dir} has no {kind_name} examples")
    example = {k: v.numpy() for k, v in _load_kind(data_dir, manifest, kind_name).items()}
    for key in ("prompt", "source"):
        example[key] = np.array([b.decode("utf-8") for b in example[key]], dtype=object)
    return example


def _stream_indices(positions, num_records, kind_seed):
    """Record index at each stream position: perm(seed, kind, epoch)[position % n].

    `positions` is a static-length run of consecutive int64 positions, so it spans at
    most (len - 1) // n + 2 epochs; only those permutations are built (unrolled, no loop).
    """
    epochs, offsets = positions // num_records, positions % num_records
    first = epochs[0]
    span = (int(positions.shape[0]) - 1) // num_records + 2
    perms = tf.stack([
        tf.random.experimental.stateless_shuffle(
            tf.range(num_records, dtype=tf.int64),
            seed=tf.random.experimental.stateless_fold_in(kind_seed, first + k))
        for k in range(span)])
    return tf.gather_nd(perms, tf.stack([epochs - first, offsets], axis=1))


def make_train_dataset(data_dir, manifest, *, per_replica_batch, seed, global_batch=None,
                       replica_id=0, start_step=0):
    """Infinite dataset of this replica's share of each global batch (flat dict, see module doc).

    Keys: INSTANCE_PIXELS/EMBEDDING/TOKEN_IDS, CLASS_* when the manifest has class
    data, and EXAMPLE_POSITION (this replica's positions within the global batch).
    Call it once per replica with that replica's `replica_id` (e.g. from an InputContext).
    """
    batch = int(per_replica_batch)
    global_batch = batch if global_batch is None else int(global_batch)
    if batch < 1 or global_batch % batch:
        raise ValueError(f"global_batch ({global_batch}) must be a positive multiple of "
                         f"per_replica_batch ({batch})")
    if not 0 <= replica_id < global_batch // batch:
        raise ValueError(f"replica_id must be in [0, {global_batch // batch}) for global_batch "
                         f"{global_batch} and per_replica_batch {batch}, got {replica_id}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")

    streams = [("instance", features.KIND_INSTANCE, _INSTANCE_KEYS)]
    if manifest.has_class:
        streams.append(("class", features.KIND_CLASS, _CLASS_KEYS))
    # Keep only what training reads (uint8 images, embeddings, ids): these tensors are
    # captured by the map function below.
    data = []
    for kind_name, kind_id, keys in streams:
        loaded = _load_kind(data_dir, manifest, kind_name)
        data.append((kind_id, keys, [loaded[k] for k in ("image", "embedding", "token_ids")]))
    offset = replica_id * batch
    local = tf.range(batch, dtype=tf.int64)

    def make_batch(step):
        positions = step * global_batch + offset + local
        out = {features.EXAMPLE_POSITION: tf.cast(offset + local, tf.int32)}
        for kind_id, (pixels_key, embedding_key, ids_key), (image, embedding, ids) in data:
            # The kind is folded into the seed so the two streams are shuffled independently.
            idx = _stream_indices(positions, int(image.shape[0]), tf.constant([seed, kind_id], tf.int64))
            out[pixels_key] = features.to_pixels(tf.gather(image, idx))
            out[embedding_key] = tf.gather(embedding, idx)
            out[ids_key] = tf.gather(ids, idx)
        return out

    dataset = tf.data.Dataset.counter(start=start_step, dtype=tf.int64)
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # Sharding across replicas is done above by replica_id; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
