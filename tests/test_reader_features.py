"""Reader features added for data at scale: concepts, cached latents, augmentation, bounded
shards and corrupt-shard errors, on tiny hand-made records."""

import os

import numpy as np
import pytest

from dbdist.data import augment, example_noise, features, manifest as manifest_lib, reader, writer

RES, EMB, LATENT = 4, (77, 2), (1, 1, 2)


def _prompt_row(prompt_id, kind, index, concept):
    """The prompt-table row of one record: token_ids[0] = 1000 * kind + index, token_ids[1] = concept."""
    ids = np.zeros(EMB[0], np.int64)
    ids[0], ids[1] = 1000 * kind + index, concept
    return features.serialize_prompt(prompt_id=prompt_id, prompt=f"p{concept}", token_ids=ids,
                                     embedding=np.full(EMB, index, np.float32))


def _record(kind, index, concept, *, width=RES, latents=False, flipped=False, prompt_id=0):
    """A record whose prompt (row `prompt_id`, see _prompt_row) identifies it."""
    common = dict(prompt_id=prompt_id, kind=kind, index=index, source=f"{kind}-{index}.png", concept=concept)
    if latents:
        mean = np.full(LATENT, index + 1, np.float32)
        return features.serialize_example(**common, latents=(mean, mean - 100),
                                          flipped_latents=(-mean, -mean - 100) if flipped else None)
    # Column j of the image holds j, so crops and flips are visible in the pixels.
    image = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (RES, width, 3)).copy()
    return features.serialize_example(**common, image=image)


def _data_dir(path, concepts_counts, *, width=RES, latents=False, flipped=False, max_shard_bytes=10**9):
    """concepts_counts: [(num_instance, num_class)] per concept."""
    shards, concepts, rows = {}, [], []
    for kind, name in ((0, "instance"), (1, "class")):
        with writer.ShardWriter(path, name, max_shard_bytes) as out:
            index = 0
            for c, counts in enumerate(concepts_counts):
                for _ in range(counts[kind]):
                    out.write(_record(kind, index, c, width=width, latents=latents, flipped=flipped,
                                      prompt_id=len(rows)))
                    rows.append(_prompt_row(len(rows), kind, index, c))
                    index += 1
            shards[name] = out.close()
    with writer.ShardWriter(path, "prompts", max_shard_bytes) as out:
        for row in rows:
            out.write(row)
        shards["prompts"] = out.close()
    for c, (n_inst, n_cls) in enumerate(concepts_counts):
        concepts.append(manifest_lib.ConceptCounts(
            instance_prompt=f"p{c}", class_prompt=f"c{c}" if n_cls else "", instance_dir=f"i{c}",
            class_dir=f"c{c}" if n_cls else "", num_instance=n_inst, num_class=n_cls))
    m = manifest_lib.Manifest(
        preset="tiny", resolution=RES, embedding_shape=EMB, max_length=EMB[0],
        record_format="latents" if latents else "pixels", latent_shape=LATENT if latents else (),
        flipped_latents=flipped, concepts=tuple(concepts), num_instance=sum(n for n, _ in concepts_counts),
        num_class=sum(n for _, n in concepts_counts), instance_shards=shards["instance"],
        class_shards=shards["class"], prompt_shards=shards["prompts"], num_prompts=len(rows), created_by="test")
    manifest_lib.write_manifest(path, m)
    return str(path), manifest_lib.read_manifest(path)


def _take(data, steps, **kwargs):
    path, m = data
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("per_replica_batch", 4)
    ds = reader.make_train_dataset(path, m, **kwargs)
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(steps)]


def test_each_instance_is_paired_with_a_class_example_of_its_concept(tmp_path):
    data = _data_dir(tmp_path, [(2, 3), (3, 2), (1, 4)])
    batches = _take(data, 6)
    seen = set()
    # Concept 2 has 1 instance image and 4 class images: 24 positions hold it about 4 times,
    # yet its class stream advances one position per instance epoch and sweeps all 4.
    for b in batches:
        inst_concept = b[features.INSTANCE_TOKEN_IDS][:, 1]
        cls_concept = b[features.CLASS_TOKEN_IDS][:, 1]
        np.testing.assert_array_equal(inst_concept, cls_concept)
        seen |= set(b[features.CLASS_TOKEN_IDS][:, 0].tolist())
    assert seen == {1000 + i for i in range(9)}  # every class image of every concept is used


def test_shard_writer_bounds_shard_size_and_reader_reads_them_all(tmp_path):
    record_size = len(_record(0, 0, 0)) + 16
    data = _data_dir(tmp_path, [(5, 7)], max_shard_bytes=3 * record_size)
    path, m = data
    assert m.instance_shards == ("instance-00000.tfrecord", "instance-00001.tfrecord")
    assert 3 <= len(m.class_shards) <= 4  # 3 records a shard, fewer where the index has 2 digits
    for name in m.instance_shards + m.class_shards:
        assert os.path.getsize(os.path.join(path, name)) <= 3 * record_size
    assert reader.read_all_examples(path, m, "class")["index"].tolist() == list(range(7))
    assert not [n for n in os.listdir(path) if n.startswith(writer.TMP_PREFIX)]


def test_shard_writer_abort_leaves_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with writer.ShardWriter(tmp_path, "class", 10**6) as out:
            out.write(b"x" * 10)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_cached_latents_batches_and_flips(tmp_path):
    data = _data_dir(tmp_path, [(3, 2)], latents=True, flipped=True)
    (plain,) = _take(data, 1)
    assert features.INSTANCE_PIXELS not in plain and plain[features.INSTANCE_LATENT_MEAN].shape == (4,) + LATENT
    idx = plain[features.INSTANCE_TOKEN_IDS][:, 0]
    np.testing.assert_array_equal(plain[features.INSTANCE_LATENT_MEAN][:, 0, 0, 0], idx + 1)
    np.testing.assert_array_equal(plain[features.INSTANCE_LATENT_LOGVAR][:, 0, 0, 0], idx + 1 - 100)
    flipped = _take(data, 8, augmentation=augment.Augmentation(random_flip=True))
    signs = np.concatenate([np.sign(b[features.CLASS_LATENT_MEAN][:, 0, 0, 0]) for b in flipped])
    assert 0.2 < np.mean(signs < 0) < 0.8  # about half take the mirrored crop's latents


def test_flip_needs_flipped_latents_and_random_crop_needs_pixels(tmp_path):
    data = _data_dir(tmp_path, [(1, 0)], latents=True)
    with pytest.raises(ValueError, match="without their flipped copies.*--cache_latents --random_flip"):
        _take(data, 1, augmentation=augment.Augmentation(random_flip=True))
    with pytest.raises(ValueError, match="random crops need pixel records"):
        _take(data, 1, augmentation=augment.Augmentation(center_crop=False))


def test_crop_and_flip_are_per_example_and_topology_invariant(tmp_path):
    data = _data_dir(tmp_path, [(3, 3)], width=2 * RES)  # stored 4x8: room to crop sideways
    aug = augment.Augmentation(random_flip=True, center_crop=False)
    whole = _take(data, 6, augmentation=aug)
    first_columns = np.concatenate([b[features.INSTANCE_PIXELS][:, 0, 0, 0] for b in whole])
    last_columns = np.concatenate([b[features.INSTANCE_PIXELS][:, 0, -1, 0] for b in whole])
    values = np.round((first_columns + 1) * 127.5).astype(int)
    assert len(set(values.tolist())) > 2                  # random offsets, not one fixed crop
    assert np.any(first_columns > last_columns)           # some crops mirrored
    assert np.any(first_columns < last_columns)           # and some not
    centred = _take(data, 1)[0][features.INSTANCE_PIXELS]
    np.testing.assert_allclose(np.round((centred[0, 0, :, 0] + 1) * 127.5), [2, 3, 4, 5])
    # Two replicas of 2 see exactly the global batch of 4.
    parts = [_take(data, 6, augmentation=aug, per_replica_batch=2, global_batch=4, replica_id=r) for r in (0, 1)]
    for s in range(6):
        for key in whole[s]:
            np.testing.assert_array_equal(np.concatenate([parts[0][s][key], parts[1][s][key]]), whole[s][key])
    resumed = _take(data, 2, augmentation=aug, start_step=4)
    for key in whole[4]:
        np.testing.assert_array_equal(resumed[0][key], whole[4][key])


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_shard_is_named(tmp_path, damage):
    path, m = _data_dir(tmp_path, [(3, 4)], max_shard_bytes=2 * (len(_record(0, 0, 0)) + 16))
    victim = os.path.join(path, m.class_shards[1])
    data = bytearray(open(victim, "rb").read())
    if damage == "truncate":
        data = data[:len(data) - 7]
    else:
        data[len(data) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(data))
    with pytest.raises(reader.CorruptShardError, match=rf"{m.class_shards[1]}: corrupted, truncated"):
        reader.make_train_dataset(path, m, per_replica_batch=1, seed=0)


def test_one_dataset_serves_a_workers_replicas_in_turn(tmp_path):
    # Element k of one worker's dataset is local replica k % 2's batch: global positions
    # [r*B, (r+1)*B), exactly what a dataset per replica gave before it was read once.
    data = _data_dir(tmp_path, [(3, 2), (2, 3)])
    aug = augment.Augmentation(random_flip=True)
    shared = _take(data, 8, augmentation=aug, per_replica_batch=2, global_batch=6, replica_id=1, local_replicas=2)
    per_replica = [_take(data, 4, augmentation=aug, per_replica_batch=2, global_batch=6, replica_id=r) for r in (1, 2)]
    for k, batch in enumerate(shared):
        replica, step = 1 + k % 2, k // 2
        np.testing.assert_array_equal(batch[features.EXAMPLE_POSITION], [2 * replica, 2 * replica + 1])
        for key, value in per_replica[replica - 1][step].items():
            np.testing.assert_array_equal(batch[key], value)


# Run in a fresh process: logical CPU devices must be configured before TensorFlow starts.
_MIRRORED_READS = """
import json, sys
import numpy as np
import tensorflow as tf
from dbdist.data import features, manifest, reader
from dbdist.training import input as train_input
from dbdist.training.strategy import make_strategy

path = sys.argv[1]
m = manifest.read_manifest(path)
strategy = make_strategy("mirrored", num_cpu_devices=2)
reads = []
read_shard = reader._read_shard
reader._read_shard = lambda shard, layout: reads.append(shard) or read_shard(shard, layout)
dataset = train_input.distributed_dataset(strategy, path, m, global_batch=4, seed=3)
steps = []
for _, batch in zip(range(3), dataset):
    steps.append([{key: v.numpy().tolist() for key, v in zip(
        ("ids", "position"), (ids, position))} for ids, position in zip(
        strategy.experimental_local_results(batch[features.INSTANCE_TOKEN_IDS]),
        strategy.experimental_local_results(batch[features.EXAMPLE_POSITION]))])
print(json.dumps({"reads": reads, "steps": steps}))
"""


def test_mirrored_replicas_share_one_read_of_the_shards(tmp_path):
    import json
    import subprocess
    import sys

    path, m = _data_dir(tmp_path, [(5, 3)], max_shard_bytes=2 * (len(_record(0, 0, 0)) + 16))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _MIRRORED_READS, path], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Each shard read once for the worker, not once per replica.
    shards = [os.path.join(path, name) for name in m.instance_shards + m.class_shards]
    assert sorted(result["reads"]) == sorted(shards)
    whole = _take((path, m), 3, per_replica_batch=4)  # the same global batches on one replica
    for step, replicas in enumerate(result["steps"]):
        assert [r["position"] for r in replicas] == [[0, 1], [2, 3]]
        got = np.concatenate([np.asarray(r["ids"]) for r in replicas])
        np.testing.assert_array_equal(got, whole[step][features.INSTANCE_TOKEN_IDS])


NOISE_KEYS = [key for stream in example_noise.BATCH_KEYS.values() for key in stream.values()]


def test_each_examples_noise_is_keyed_by_its_global_position_whatever_the_split(tmp_path):
    # One replica, two replicas fed by one pipeline, and two workers must hand every global-batch
    # position the same noise and timestep: the key is (seed, pipeline step, global position,
    # stream), never the replica. With accumulation the pipeline counts micro-steps from
    # step * accum (as train.py starts it), so micro-batch m of step s is keyed s * accum + m.
    data = _data_dir(tmp_path, [(3, 2), (2, 2)])
    spec = example_noise.NoiseSpec(latent_shape=(2, 2, 3), num_train_timesteps=1000, noise_offset=0.1)
    accum, step, seed = 2, 5, 3
    start = step * accum
    one = _take(data, accum, per_replica_batch=4, noise=spec, start_step=start, seed=seed)
    local = _take(data, 2 * accum, per_replica_batch=2, global_batch=4, local_replicas=2, noise=spec,
                  start_step=start, seed=seed)
    workers = [_take(data, accum, per_replica_batch=2, global_batch=4, replica_id=r, noise=spec, start_step=start,
                     seed=seed) for r in (0, 1)]
    for micro in range(accum):
        whole = one[micro]
        assert all(v.shape[0] == 4 for v in whole.values())  # every key per example, position axis first
        for key in NOISE_KEYS:
            np.testing.assert_array_equal(np.concatenate([local[2 * micro][key], local[2 * micro + 1][key]]), whole[key])
            np.testing.assert_array_equal(np.concatenate([workers[0][micro][key], workers[1][micro][key]]), whole[key])
        for stream, keys in example_noise.BATCH_KEYS.items():
            for position in range(4):
                expected = example_noise.draw(spec, seed=seed, step=start + micro, position=position, stream=stream)
                for name, key in keys.items():
                    np.testing.assert_array_equal(whole[key][position], expected[name])
    assert whole[features.INSTANCE_NOISE].shape == (4, 2, 2, 3) and whole[features.CLASS_TIMESTEP].dtype == np.int32
    # Micro-batches, positions and streams each draw their own numbers.
    assert not np.array_equal(one[0][features.INSTANCE_NOISE], one[1][features.INSTANCE_NOISE])
    assert not np.array_equal(whole[features.INSTANCE_NOISE][0], whole[features.INSTANCE_NOISE][1])
    assert not np.array_equal(whole[features.INSTANCE_NOISE], whole[features.CLASS_NOISE])


def test_offset_noise_adds_one_draw_per_example_and_channel(tmp_path):
    # diffusers: noise += noise_offset * randn(B, C, 1, 1). Drawn in the pipeline with a key of
    # its own, so the plain noise, the VAE noise and the timesteps stay what they were.
    data = _data_dir(tmp_path, [(3, 2)])
    shape, seed = (2, 3, 4), 3
    (plain,) = _take(data, 1, noise=example_noise.NoiseSpec(shape), seed=seed)
    (zero,) = _take(data, 1, noise=example_noise.NoiseSpec(shape, noise_offset=0.0), seed=seed)
    (offset,) = _take(data, 1, noise=example_noise.NoiseSpec(shape, noise_offset=0.3), seed=seed)
    for key in NOISE_KEYS:
        np.testing.assert_array_equal(zero[key], plain[key])  # 0 is today's noise, bit for bit
        if key not in (features.INSTANCE_NOISE, features.CLASS_NOISE):
            np.testing.assert_array_equal(offset[key], plain[key])
    for stream, key in ((0, features.INSTANCE_NOISE), (1, features.CLASS_NOISE)):
        draws = np.stack([example_noise.offset_noise(seed, 0, p, stream, shape[-1]).numpy() for p in range(4)])
        expected = plain[key].astype(np.float64) + 0.3 * draws  # (4, 1, 1, C) broadcast over h and w
        # One float32 addition: rounding of values of order 1.
        np.testing.assert_allclose(offset[key], expected, rtol=0, atol=1e-6)
        assert len(np.unique(np.round(draws, 6))) == draws.size  # its own draw per example and channel
