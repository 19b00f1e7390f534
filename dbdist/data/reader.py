"""The training stream: instance (and class) examples as flat batches, independent of replicas.

Each kind is an infinite stream: epoch e is a permutation of its records fixed by
(seed, kind, e) alone. The global batch at step s holds stream positions
[s*G, (s+1)*G); replica r takes [s*G + r*B, s*G + (r+1)*B). The class example at
position p comes from the class stream of the concept of the instance example at
p, so each subject is regularised by its own class. Positions are computed from the
step number, so a global batch is the same whatever the replica split, and
`start_step` resumes exactly without replaying earlier steps.

Records are held in memory still serialized (PNG or raw latents: about their size on
disk) and decoded, cropped and flipped per example in parallel as batches are made;
each example's text embedding and token ids are gathered from the prompt table
(dbdist/data/prompt_table.py), held in memory once.
"""

import os
import re

import numpy as np
import tensorflow as tf

from dbdist.data import augment, example_noise, features
from dbdist.errors import UserError
from dbdist.data.prompt_table import PromptTable

_KEYS = {
    features.KIND_INSTANCE: dict(pixels=features.INSTANCE_PIXELS, mean=features.INSTANCE_LATENT_MEAN,
                                 logvar=features.INSTANCE_LATENT_LOGVAR, embedding=features.INSTANCE_EMBEDDING,
                                 token_ids=features.INSTANCE_TOKEN_IDS),
    features.KIND_CLASS: dict(pixels=features.CLASS_PIXELS, mean=features.CLASS_LATENT_MEAN,
                              logvar=features.CLASS_LATENT_LOGVAR, embedding=features.CLASS_EMBEDDING,
                              token_ids=features.CLASS_TOKEN_IDS),
}


# Scalar fields read up front to order, pair and check records.
_ID_KEYS = (features.KIND, features.CONCEPT, features.INDEX, features.PROMPT_ID)


class CorruptShardError(ValueError):
    """A shard that cannot be read or does not match the feature spec (names the shard)."""


def tf_error_text(err):
    """A TensorFlow error's message without the op/function decoration, on one line."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", err.message)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    got = re.search(r"First \d+ elements of x:\s*\[([^\]]*)\]", text)  # tf.debugging.assert_* failures
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{first}, got {got.group(1)}" if got else first


def _corrupt(path, err):
    return CorruptShardError(f"{path}: corrupted, truncated or not a dbdist shard ({tf_error_text(err)}); "
                             f"run python -m tfrecords_tools.verify --data_dir={os.path.dirname(path)}")


def _read_shard(path, layout):
    """All serialized records of one shard, checked against the spec (not yet decoded)."""
    try:
        parts = list(tf.data.TFRecordDataset(path).batch(1024))
        if not parts:
            return tf.zeros([0], tf.string), {k: np.zeros([0], np.int64) for k in _ID_KEYS}
        records = tf.concat(parts, 0)
        # Every field present with the right length; the heavy bytes are decoded later.
        parsed = tf.io.parse_example(records, features.feature_spec(layout))
        ids = {k: parsed[k].numpy() for k in _ID_KEYS}
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as err:
        raise _corrupt(path, err) from err
    return records, ids


def read_prompt_table(data_dir, manifest):
    """The `PromptTable` of `data_dir`, checked: rows 0..num_prompts-1, each once."""
    rows = []
    for name in manifest.prompt_shards:
        path = os.path.join(str(data_dir), name)
        try:
            for batch in tf.data.TFRecordDataset(path).batch(256):
                rows.append({k: v.numpy() for k, v in features.decode_prompts(batch, manifest.layout).items()})
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as err:
            raise _corrupt(path, err) from err
    if not rows:
        raise UserError(f"{data_dir}: the prompt table {manifest.prompt_shards} is empty; "
                         f"the manifest expects {manifest.num_prompts} prompts")
    table = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    ids = table["prompt_id"]
    if not np.array_equal(np.sort(ids), np.arange(manifest.num_prompts)):
        raise UserError(f"{data_dir}: the prompt table holds prompt ids {sorted(ids.tolist())[:20]}...; "
                         f"the manifest expects 0..{manifest.num_prompts - 1}, each once")
    order = np.argsort(ids)
    return PromptTable(tuple(p.decode("utf-8") for p in table["prompt"][order]),
                       table["token_ids"][order], table["embedding"][order])


def read_kind(data_dir, manifest, kind_name):
    """(serialized records ordered by their `index` field, their concept ids) of one kind."""
    paths = [os.path.join(str(data_dir), name) for name in manifest.shards(kind_name)]
    expected = manifest.num_examples(kind_name)
    if not paths:
        raise UserError(f"{data_dir} has no {kind_name} shards (num_{kind_name}={expected})")
    shards = [_read_shard(path, manifest.layout) for path in paths]
    records = tf.concat([r for r, _ in shards], 0)
    ids = {k: np.concatenate([i[k] for _, i in shards]) for k in _ID_KEYS}
    index, count = ids[features.INDEX], len(ids[features.INDEX])
    order = np.argsort(index, kind="stable")
    if count != expected or not np.array_equal(index[order], np.arange(count)):
        raise UserError(f"{data_dir}: {kind_name} shards hold {count} records with indices "
                         f"{sorted(index.tolist())[:20]}...; the manifest expects indices 0..{expected - 1}")
    kind_id = features.KIND_NAMES.index(kind_name)
    if not np.all(ids[features.KIND] == kind_id):
        raise UserError(f"{data_dir}: {kind_name} shards hold records of another kind "
                         f"(kind values {sorted(set(ids[features.KIND].tolist()))}, expected {kind_id})")
    concepts = ids[features.CONCEPT][order]
    if count and not 0 <= concepts.min() <= concepts.max() < len(manifest.concepts):
        raise UserError(f"{data_dir}: {kind_name} records name concepts {sorted(set(concepts.tolist()))}; "
                         f"the manifest has {len(manifest.concepts)}")
    prompt_ids = ids[features.PROMPT_ID]
    if count and not 0 <= prompt_ids.min() <= prompt_ids.max() < manifest.num_prompts:
        raise UserError(f"{data_dir}: {kind_name} records name prompt ids {prompt_ids.min()}..{prompt_ids.max()}; "
                         f"the prompt table has {manifest.num_prompts}")
    return tf.gather(records, order), concepts


def read_all_examples(data_dir, manifest, kind):
    """Every record of `kind` ('instance'/'class' or its KIND_ id) decoded as numpy, ordered by index.

    Keys as `features.decode_example` plus the prompt table's "prompt", "token_ids" and
    "embedding" of each; "prompt"/"source" are str. Pixel images are
    stacked when they share a shape, else kept as an object array.
    """
    kind_name = features.KIND_NAMES[int(kind)] if isinstance(kind, (int, np.integer)) else kind
    if kind_name not in features.KIND_NAMES:
        raise UserError(f"kind must be one of {features.KIND_NAMES} or 0/1, got {kind!r}")
    if manifest.num_examples(kind_name) == 0:
        raise UserError(f"{data_dir} has no {kind_name} examples")
    records, _ = read_kind(data_dir, manifest, kind_name)
    decoded = [features.decode_example(r, manifest.layout) for r in records]
    example = {}
    for key in decoded[0]:
        values = [d[key].numpy() for d in decoded]
        if key == "source":
            example[key] = np.array([v.decode("utf-8") for v in values], dtype=object)
        elif len({np.shape(v) for v in values}) == 1:
            example[key] = np.stack(values)
        else:
            example[key] = np.empty(len(values), dtype=object)
            example[key][:] = values
    return read_prompt_table(data_dir, manifest).join(example)


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


def _class_indices(class_positions, concept, class_layout, seed):
    """Class record of each example: position q of its concept c's class stream, i.e.
    rows_c[perm(seed, c, q // n_c)[q % n_c]] over c's n_c class records.

    `class_layout` = (rows grouped by concept, each concept's first slot, its count).
    """
    rows, starts, counts = class_layout
    picks = []
    for i in range(int(class_positions.shape[0])):  # the worker's slice of the batch: static and small
        q, c = class_positions[i], concept[i]
        n, start = tf.gather(counts, c), tf.gather(starts, c)
        concept_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64), c)
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(concept_seed, q // n))
        picks.append(tf.gather(rows, start + perm[q % n]))
    return tf.stack(picks)


def make_train_dataset(data_dir, manifest, *, per_replica_batch, seed, global_batch=None,
                       replica_id=0, local_replicas=1, start_step=0, augmentation=augment.Augmentation(),
                       noise: example_noise.NoiseSpec = None):
    """Infinite dataset of the per-replica batches of replicas [replica_id, replica_id + local_replicas).

    Element k of the dataset is replica `replica_id + k % local_replicas`'s share of
    global batch `start_step + k // local_replicas` (the order tf.distribute hands a
    worker's elements to its replicas). One call serves all replicas of a worker, so
    the shards are read, and held in memory, once per worker, not once per replica.
    Keys: INSTANCE_PIXELS (pixel records) or INSTANCE_LATENT_MEAN/LOGVAR (latent
    records), INSTANCE_EMBEDDING/TOKEN_IDS, the CLASS_* ones when the manifest has
    class data, and EXAMPLE_POSITION (the example's position within the global batch).
    With `noise` (a `NoiseSpec`), each example also gets its own randomness, keyed by
    (seed, the dataset's step, its position, its stream): INSTANCE_VAE_NOISE,
    INSTANCE_NOISE, INSTANCE_TIMESTEP and the CLASS_* ones (dbdist/data/example_noise.py).
    """
    batch = int(per_replica_batch)
    global_batch = batch if global_batch is None else int(global_batch)
    if batch < 1 or global_batch % batch:
        raise ValueError(f"global_batch ({global_batch}) must be a positive multiple of "
                         f"per_replica_batch ({batch})")
    if local_replicas < 1 or not 0 <= replica_id <= global_batch // batch - local_replicas:
        raise ValueError(f"replicas [replica_id, replica_id + local_replicas) must lie in [0, {global_batch // batch}) "
                         f"for global_batch {global_batch} and per_replica_batch {batch}, got replica_id={replica_id}, "
                         f"local_replicas={local_replicas}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    layout = manifest.layout
    if augmentation.random_flip and layout.record_format == features.LATENTS and not layout.flipped_latents:
        raise UserError(f"{data_dir} holds cached latents without their flipped copies; remake it with "
                         "make_tfrecords --cache_latents --random_flip, or train without --random_flip")
    if not augmentation.center_crop and layout.record_format == features.LATENTS:
        raise UserError(f"{data_dir} holds cached latents of the centre crop; random crops need pixel "
                         "records (make_tfrecords without --cache_latents), or train with --center_crop")

    table = read_prompt_table(data_dir, manifest)
    embeddings, token_ids = tf.constant(table.embeddings), tf.constant(table.token_ids)
    instance_records, instance_concepts = read_kind(data_dir, manifest, "instance")
    num_instance = int(instance_records.shape[0])
    if manifest.has_class:
        class_records, class_concepts = read_kind(data_dir, manifest, "class")
        # Class rows grouped by concept: concept c owns rows[starts[c]:starts[c] + counts[c]].
        counts = np.bincount(class_concepts, minlength=len(manifest.concepts)).astype(np.int64)
        class_layout = (np.argsort(class_concepts, kind="stable").astype(np.int64),
                        np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64), counts)
        # Rank of each instance record among its concept's, and each concept's instance count:
        # instance epoch e of concept c consumes class positions [e*n_c, (e+1)*n_c) of c's stream.
        rank = np.zeros(num_instance, np.int64)
        for c in range(len(manifest.concepts)):
            rank[instance_concepts == c] = np.arange(np.sum(instance_concepts == c))
        per_concept = np.bincount(instance_concepts, minlength=len(manifest.concepts)).astype(np.int64)
    # This worker's slice of every global batch: positions [offset, offset + local_replicas * batch),
    # replica replica_id + j taking the j-th run of `batch` of them.
    offset = replica_id * batch
    slice_size = local_replicas * batch
    local = tf.range(slice_size, dtype=tf.int64)

    def pick_records(step):
        """This worker's serialized instance (and paired class) records at `step`."""
        positions = step * global_batch + offset + local
        idx = _stream_indices(positions, num_instance, tf.constant([seed, 0], tf.int64))
        out = {"step": tf.fill([slice_size], step), "position": offset + local,
               "instance": tf.gather(instance_records, idx)}
        if manifest.has_class:
            concept = tf.gather(instance_concepts, idx)
            class_positions = (positions // num_instance) * tf.gather(per_concept, concept) + tf.gather(rank, idx)
            out["class"] = tf.gather(class_records, _class_indices(class_positions, concept, class_layout, seed))
        return out

    def decode(element):
        out = {features.EXAMPLE_POSITION: tf.cast(element["position"], tf.int32)}
        kinds = [("instance", features.KIND_INSTANCE)] + ([("class", features.KIND_CLASS)] if manifest.has_class else [])
        for name, kind in kinds:
            example = features.decode_example(element[name], layout)
            keys = _KEYS[kind]
            where = dict(seed=seed, step=element["step"], position=element["position"], stream=kind)
            if layout.record_format == features.PIXELS:
                image = augment.augment_pixels(example["image"], layout.resolution, augmentation, **where)
                out[keys["pixels"]] = features.to_pixels(image)
            else:
                out[keys["mean"]], out[keys["logvar"]] = augment.pick_latents(example, augmentation, **where)
            out[keys["embedding"]] = tf.gather(embeddings, example["prompt_id"])
            out[keys["token_ids"]] = tf.gather(token_ids, example["prompt_id"])
            if noise is not None:
                for name, value in example_noise.draw(noise, **where).items():
                    out[example_noise.BATCH_KEYS[kind][name]] = value
        return out

    dataset = tf.data.Dataset.counter(start=start_step, dtype=tf.int64).map(pick_records).unbatch()
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch, drop_remainder=True)  # consecutive runs of `batch`: one replica each
    options = tf.data.Options()
    # Sharding across replicas is done above by replica_id; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
