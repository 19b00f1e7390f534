"""dbdist.data features/writer/manifest/reader: the TFRecord layer end to end, on tiny fake data."""

import dataclasses
import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dbdist.data import features, manifest as manifest_lib, prompt_table, reader, writer

RES = 8
EMB = (77, 4)
NUM_INSTANCE, NUM_CLASS = 3, 5
LAYOUT = features.RecordLayout(RES, EMB)


def _example(kind, index, seed=0, prompt_id=0):
    """A fake example record (serialize_example's arguments)."""
    rng = np.random.default_rng([seed, kind, index])
    return dict(image=rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8), prompt_id=prompt_id,
                kind=kind, index=index, source=f"{features.KIND_NAMES[kind]}-{index}.png")


def _prompt(kind, index, seed=0):
    """The fake prompt-table row of one example, whose token_ids[0] = 1000 * kind + index
    identifies the example in batches (every fake example has a prompt of its own)."""
    rng = np.random.default_rng([seed, kind, index, 1])
    ids = rng.integers(0, 49408, EMB[0])
    ids[0] = 1000 * kind + index
    return dict(prompt=f"a photo of {features.KIND_NAMES[kind]} {index} ünïcode", token_ids=ids,
                embedding=rng.standard_normal(EMB).astype(np.float32))


def _write(path, name, records, num_shards):
    """Records into `num_shards` shards of about equal count (records here are about one size)."""
    if not records:
        return ()
    per_shard = -(-len(records) // num_shards)
    with writer.ShardWriter(path, name, per_shard * (max(len(r) for r in records) + 16)) as out:
        for record in records:
            out.write(record)
        return out.close()


def _make_data_dir(path, num_instance=NUM_INSTANCE, num_class=NUM_CLASS, num_shards=2):
    shards = {}
    rows = [(features.KIND_INSTANCE, i) for i in range(num_instance)] + [(features.KIND_CLASS, i) for i in range(num_class)]
    for kind, count in ((features.KIND_INSTANCE, num_instance), (features.KIND_CLASS, num_class)):
        name = features.KIND_NAMES[kind]
        records = [features.serialize_example(**_example(kind, i, prompt_id=rows.index((kind, i)))) for i in range(count)]
        shards[name] = _write(path, name, records, num_shards)
    table = [features.serialize_prompt(prompt_id=row, **_prompt(*key)) for row, key in enumerate(rows)]
    shards["prompts"] = _write(path, "prompts", table, num_shards)
    concept = manifest_lib.ConceptCounts(
        instance_prompt="a photo of sks ball", class_prompt="a photo of a ball" if num_class else "",
        instance_dir="sks", class_dir="ball" if num_class else "", num_instance=num_instance, num_class=num_class)
    m = manifest_lib.Manifest(
        preset="tiny", resolution=RES, embedding_shape=EMB, max_length=EMB[0], concepts=(concept,),
        num_instance=num_instance, num_class=num_class, instance_shards=shards["instance"],
        class_shards=shards["class"], prompt_shards=shards["prompts"], num_prompts=len(rows), created_by="dbdist test")
    manifest_lib.write_manifest(path, m)
    return str(path), m


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def instance_only_dir(tmp_path_factory):
    return _make_data_dir(tmp_path_factory.mktemp("inst"), num_class=0, num_shards=1)


# --- features ---------------------------------------------------------------------------

def test_round_trip_exact_eager_and_in_tf_data():
    ex = _example(features.KIND_CLASS, 4, prompt_id=17)
    record = features.serialize_example(**ex)
    decoded = features.decode_example(record, LAYOUT)
    np.testing.assert_array_equal(decoded["image"].numpy(), ex["image"])  # PNG is lossless
    assert decoded["source"].numpy().decode() == ex["source"]
    decode = lambda x: features.decode_example(x, LAYOUT)
    for parsed in (decode(record), next(iter(tf.data.Dataset.from_tensors(record).map(decode)))):
        np.testing.assert_array_equal(parsed["image"].numpy(), ex["image"])
        assert (int(parsed["kind"]), int(parsed["index"]), int(parsed["concept"]), int(parsed["prompt_id"])) == (1, 4, 0, 17)
    row = _prompt(features.KIND_CLASS, 4)
    table = features.decode_prompts([features.serialize_prompt(prompt_id=17, **row)] * 2, LAYOUT)
    assert table["prompt"].numpy()[1].decode() == row["prompt"] and table["prompt_id"].numpy().tolist() == [17, 17]
    np.testing.assert_array_equal(table["embedding"].numpy()[1], row["embedding"])
    np.testing.assert_array_equal(table["token_ids"].numpy()[1], row["token_ids"])
    assert table["token_ids"].dtype == tf.int32


def test_prompt_table_stores_each_embedding_once_at_sd_v2_size(tmp_path):
    # 40 examples of 2 prompts with sd-v2's (77, 1024) embeddings: 2 embeddings on disk, not 40.
    emb = (77, 1024)
    prompts = ["a photo of sks dog", "a photo of dog"]
    token_ids = {p: np.full(emb[0], i + 1) for i, p in enumerate(prompts)}
    encode = lambda ids: np.repeat(ids[:, :, None], emb[1], axis=2).astype(np.float32)
    names = prompt_table.write_prompt_table(tmp_path, prompts, token_ids, encode, max_shard_bytes=10**9)
    table_bytes = os.path.getsize(tmp_path / names[0])
    assert 2 * 315392 < table_bytes < 2 * 315392 + 1000  # two float32 embeddings and little else
    examples = [features.serialize_example(**_example(0, i, prompt_id=i % 2)) for i in range(40)]
    png_bytes = sum(len(features.images.encode_png(_example(0, i)["image"])) for i in range(40))
    assert (sum(map(len, examples)) - png_bytes) / 40 < 200  # per example: field names and a few integers
    concept = manifest_lib.ConceptCounts(instance_prompt=prompts[0], class_prompt="", instance_dir="sks",
                                         class_dir="", num_instance=40, num_class=0)
    m = manifest_lib.Manifest(
        preset="sd-v2", resolution=RES, embedding_shape=emb, max_length=emb[0], concepts=(concept,),
        num_instance=40, num_class=0, instance_shards=("instance-00000.tfrecord",), class_shards=(),
        prompt_shards=names, num_prompts=2, created_by="dbdist test")
    table = reader.read_prompt_table(tmp_path, m)
    assert table.prompts == tuple(prompts)
    joined = table.join({"prompt_id": np.array([1, 0, 1])})
    assert joined["prompt"].tolist() == [prompts[1], prompts[0], prompts[1]]
    np.testing.assert_array_equal(joined["embedding"][:, 0, 0], [2, 1, 2])
    np.testing.assert_array_equal(joined["token_ids"][:, 5], [2, 1, 2])


def test_decode_static_shapes_in_tf_data():
    ds = tf.data.Dataset.from_tensors(features.serialize_example(**_example(0, 0))).map(
        lambda x: features.decode_example(x, LAYOUT))
    spec = ds.element_spec
    assert spec["prompt_id"].shape == () and spec["kind"].shape == () and spec["kind"].dtype == tf.int32
    rows = tf.data.Dataset.from_tensors([features.serialize_prompt(prompt_id=0, **_prompt(0, 0))]).map(
        lambda x: features.decode_prompts(x, LAYOUT)).element_spec
    assert rows["embedding"].shape[1:] == EMB and rows["token_ids"].shape[1:] == (EMB[0],)


def test_decode_wrong_resolution_or_width_fails():
    record = features.serialize_example(**_example(0, 0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shorter side to be 16 px"):
        features.decode_example(record, features.RecordLayout(16, EMB))
    row = features.serialize_prompt(prompt_id=0, **_prompt(0, 0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="text_embedding: expected 616 float32"):
        features.decode_prompts([row], features.RecordLayout(RES, (77, 8)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="latent_(mean|logvar).*is required"):
        features.decode_example(record, features.RecordLayout(RES, EMB, "latents", (1, 1, 4)))


def test_latent_records_round_trip_with_flips():
    rng = np.random.default_rng(0)
    mean, logvar, fmean, flogvar = (rng.standard_normal((2, 2, 4)).astype(np.float32) for _ in range(4))
    ex = {k: v for k, v in _example(0, 1).items() if k != "image"}
    layout = features.RecordLayout(RES, EMB, "latents", (2, 2, 4), flipped_latents=True)
    got = features.decode_example(features.serialize_example(
        **ex, latents=(mean, logvar), flipped_latents=(fmean, flogvar)), layout)
    for key, want in ((features.LATENT_MEAN, mean), (features.LATENT_LOGVAR, logvar),
                      (features.LATENT_MEAN_FLIPPED, fmean), (features.LATENT_LOGVAR_FLIPPED, flogvar)):
        np.testing.assert_array_equal(got[key].numpy(), want)
    assert "image" not in got
    unflipped = features.serialize_example(**ex, latents=(mean, logvar))
    with pytest.raises(tf.errors.InvalidArgumentError, match="latent_(mean|logvar)_flipped"):
        features.decode_example(unflipped, layout)  # the manifest promised flipped latents


@pytest.mark.parametrize("change, message", [
    (dict(image=np.zeros((4, 4, 3), np.float32)), r"image must be uint8 \(H, W, 3\), got float32"),
    (dict(image=np.zeros((4, 4), np.uint8)), r"image must be uint8 \(H, W, 3\), got uint8 \(4, 4\)"),
    (dict(kind=2), "kind must be 0 .* got 2"),
    (dict(prompt_id=-1), "prompt_id must be >= 0, got .*-1"),
    (dict(latents=(np.zeros((2, 2, 4), np.float32),) * 2), "either `image`"),
])
def test_serialize_rejects_bad_inputs(change, message):
    with pytest.raises(ValueError, match=message):
        features.serialize_example(**{**_example(0, 0), **change})


@pytest.mark.parametrize("change, message", [
    (dict(embedding=np.zeros(EMB, np.float64)), "embedding must be float32.*float64"),
    (dict(embedding=np.zeros((1,) + EMB, np.float32)), r"embedding must be float32.*\(1, 77, 4\)"),
    (dict(token_ids=np.zeros(76, np.int64)), r"token_ids .*\(77,\).*\(76,\)"),
])
def test_serialize_prompt_rejects_bad_inputs(change, message):
    with pytest.raises(ValueError, match=message):
        features.serialize_prompt(prompt_id=0, **{**_prompt(0, 0), **change})


# --- writer -----------------------------------------------------------------------------

def test_shard_writer_names_bounds_and_temp_then_rename(tmp_path, monkeypatch):
    renames = []
    real_rename = tf.io.gfile.rename
    monkeypatch.setattr(tf.io.gfile, "rename",
                        lambda src, dst, overwrite=False: (renames.append((src, dst)),
                                                           real_rename(src, dst, overwrite))[1])
    records = [bytes([i]) * 3 for i in range(7)]
    with writer.ShardWriter(tmp_path, "class", 2 * (3 + 16)) as out:  # room for 2 records a shard
        for record in records:
            out.write(record)
        names = out.close()
    assert names == tuple(f"class-{i:05d}.tfrecord" for i in range(4))
    # Every shard was written under a .tmp- name in the same directory and then renamed.
    assert [os.path.basename(d) for _, d in renames] == list(names)
    for src, dst in renames:
        assert os.path.basename(src).startswith(writer.TMP_PREFIX)
        assert os.path.dirname(src) == os.path.dirname(dst)
    assert sorted(os.listdir(tmp_path)) == list(names)
    read = [list(tf.data.TFRecordDataset(str(tmp_path / n)).as_numpy_iterator()) for n in names]
    assert sum(read, []) == records  # streamed in order
    assert [len(r) for r in read] == [2, 2, 2, 1]


def test_shard_writer_rejects_bad_names_and_bounds(tmp_path):
    with writer.ShardWriter(tmp_path / "empty", "class", 100) as out:
        assert out.close() == ()  # no records, no files
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ValueError, match="max_shard_bytes must be >= 1, got 0"):
        writer.ShardWriter(tmp_path, "instance", 0)
    with pytest.raises(ValueError, match="kind_name"):
        writer.ShardWriter(tmp_path, "../x", 100)


def test_remove_stale_outputs(tmp_path):
    for name in ("instance-00000-of-00001.tfrecord", ".tmp-1234-class-00000-of-00001.tfrecord",
                 "manifest.json", "notes.txt"):
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "keep.tfrecord.d").mkdir()
    writer.remove_stale_outputs(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["keep.tfrecord.d", "notes.txt"]
    writer.remove_stale_outputs(tmp_path / "does-not-exist")  # nothing to clean is fine


# --- manifest ---------------------------------------------------------------------------

def test_manifest_round_trip(data_dir):
    path, m = data_dir
    assert manifest_lib.read_manifest(path) == m
    assert m.embedding_shape == EMB and m.instance_shards == ("instance-00000.tfrecord", "instance-00001.tfrecord")
    assert not [n for n in os.listdir(path) if n.startswith(writer.TMP_PREFIX)]


def _rewrite(tmp_path, edit):
    path, m = _make_data_dir(tmp_path, num_instance=1, num_class=0, num_shards=1)
    fields = json.loads((tmp_path / "manifest.json").read_text())
    text = edit(fields)
    (tmp_path / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(fields))
    return path


def test_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no manifest.json; run python -m "
                                                 r"dbdist.make_tfrecords first"):
        manifest_lib.read_manifest(tmp_path)


@pytest.mark.parametrize("edit, error, message", [
    (lambda f: "{not json", ValueError, r"manifest.json: invalid JSON"),
    (lambda f: [f.pop("resolution"), f.pop("created_by")], ValueError,
     r"missing fields created_by, resolution"),
    (lambda f: f.update(format_version=1), ValueError, r"format_version 1 is not supported.*version 3: remake it with python -m dbdist.make_tfrecords"),
    # Version 2 stored an embedding with every example; it is refused with how to rebuild.
    (lambda f: f.update(format_version=2), ValueError, r"format_version 2 is not supported; this dbdist reads "
     r"version 3: remake it with python -m dbdist.make_tfrecords \(same flags, same --output_dir\)"),
    (lambda f: f.update(prompt_shards=[]), ValueError, r"needs its prompt table, got num_prompts=1 in shards \(\)"),
    (lambda f: f.update(concepts=[]), ValueError, r"at least one concept"),
    (lambda f: f.update(num_instance=2), ValueError, r"concepts hold 1 instance"),
    (lambda f: f.update(record_format="jpeg"), ValueError, r"record_format must be one of"),
    (lambda f: f.update(instance_shards=["instance-9.tfrecord"]), FileNotFoundError,
     r"shards that do not exist .*: instance-9.tfrecord"),
    (lambda f: f.update(embedding_shape=[77, 4, 1]), ValueError, r"embedding_shape must be"),
    (lambda f: f.update(colour="red"), ValueError, r"unknown fields colour"),
])
def test_manifest_errors(tmp_path, edit, error, message):
    path = _rewrite(tmp_path, edit)
    with pytest.raises(error, match=message):
        manifest_lib.read_manifest(path)


def test_check_compatible_says_what_differs(data_dir):
    _, m = data_dir
    manifest_lib.check_compatible(m, preset="tiny", resolution=RES, embedding_shape=EMB, pad_token_id=49407)
    expected = ("data_dir gs://b/d was made for preset 'tiny' at 8 px with embeddings (77, 4); "
                "the model is 'sd-v1' at 512 px with (77, 768)")
    with pytest.raises(ValueError) as err:
        manifest_lib.check_compatible(m, preset="sd-v1", resolution=512, embedding_shape=(77, 768),
                                      pad_token_id=49407, data_dir="gs://b/d")
    assert str(err.value) == expected
    with pytest.raises(ValueError, match="preset 'tiny'.*'sd-v2'"):
        manifest_lib.check_compatible(m, preset="sd-v2", resolution=RES, embedding_shape=EMB, pad_token_id=0)


def test_records_padded_otherwise_than_the_model_are_refused(tmp_path):
    # A manifest from before pad ids were recorded was padded with the end token, as every preset
    # then padded: sd-v1 and tiny (which still pad so) read it; sd-v2 (OpenCLIP pads with 0) refuses it.
    legacy = manifest_lib.read_manifest(_rewrite(tmp_path, lambda f: f.pop("pad_token_id")))
    assert legacy.pad_token_id == 49407
    manifest_lib.check_compatible(legacy, preset="tiny", resolution=RES, embedding_shape=EMB, pad_token_id=49407)
    with pytest.raises(ValueError, match=r"data_dir d holds prompts padded with token id 49407 and their embeddings; "
                                         r"the 'tiny' text encoder's tokenizer pads with 0: remake it"):
        manifest_lib.check_compatible(legacy, preset="tiny", resolution=RES, embedding_shape=EMB, pad_token_id=0,
                                      data_dir="d")


# --- reader -----------------------------------------------------------------------------

def _batches(data, steps, **kwargs):
    """The first `steps` batches as numpy; memoised, since building a dataset costs ~0.3 s."""
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("per_replica_batch", 2)
    return _cached_batches(data, steps, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _cached_batches(data, steps, kwargs):
    path, m = data
    ds = reader.make_train_dataset(path, m, **dict(kwargs))
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(steps)]


def _ids(batches, key=features.INSTANCE_TOKEN_IDS):
    return np.concatenate([b[key][:, 0] for b in batches]).tolist()


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_read_all_examples_ordered_and_exact(data_dir):
    path, m = data_dir
    got = reader.read_all_examples(path, m, "class")
    assert got["image"].shape == (NUM_CLASS, RES, RES, 3) and got["image"].dtype == np.uint8
    for i in range(NUM_CLASS):
        ex, row = _example(features.KIND_CLASS, i), _prompt(features.KIND_CLASS, i)
        np.testing.assert_array_equal(got["image"][i], ex["image"])
        np.testing.assert_array_equal(got["embedding"][i], row["embedding"])
        np.testing.assert_array_equal(got["token_ids"][i], row["token_ids"])
        assert got["prompt"][i] == row["prompt"] and got["source"][i] == ex["source"]
    assert got["index"].tolist() == list(range(NUM_CLASS))
    assert reader.read_all_examples(path, m, features.KIND_INSTANCE)["kind"].tolist() == [0] * NUM_INSTANCE


def test_batch_keys_shapes_and_pairing(data_dir):
    (batch,) = _batches(data_dir, 1, per_replica_batch=4)
    assert set(batch) == {features.INSTANCE_PIXELS, features.INSTANCE_EMBEDDING,
                          features.INSTANCE_TOKEN_IDS, features.CLASS_PIXELS, features.CLASS_EMBEDDING,
                          features.CLASS_TOKEN_IDS, features.EXAMPLE_POSITION}
    assert batch[features.INSTANCE_PIXELS].shape == (4, RES, RES, 3)
    assert batch[features.CLASS_EMBEDDING].shape == (4,) + EMB
    assert batch[features.EXAMPLE_POSITION].dtype == np.int32
    assert batch[features.EXAMPLE_POSITION].tolist() == [0, 1, 2, 3]
    path, m = data_dir
    spec = reader.make_train_dataset(path, m, per_replica_batch=4, seed=0).element_spec
    assert all(s.shape.is_fully_defined() for s in spec.values())
    # Pixels and embeddings belong to the record the token ids say they do.
    for row, ident in enumerate(batch[features.CLASS_TOKEN_IDS][:, 0]):
        ex, prompt = _example(features.KIND_CLASS, ident - 1000), _prompt(features.KIND_CLASS, ident - 1000)
        np.testing.assert_allclose(batch[features.CLASS_PIXELS][row], ex["image"] / 127.5 - 1, atol=1e-6)
        np.testing.assert_array_equal(batch[features.CLASS_EMBEDDING][row], prompt["embedding"])
        np.testing.assert_array_equal(batch[features.CLASS_TOKEN_IDS][row], prompt["token_ids"])


def test_each_epoch_is_a_permutation_and_epochs_differ(data_dir):
    # 32 positions: 10 whole instance epochs, 6 class epochs; B=4 > 3 instance records
    # also covers batches that span more than one epoch.
    batches = _batches(data_dir, 8, per_replica_batch=4)
    inst = _ids(batches)
    cls = [i - 1000 for i in _ids(batches, features.CLASS_TOKEN_IDS)]
    epochs = [tuple(inst[e * NUM_INSTANCE:(e + 1) * NUM_INSTANCE]) for e in range(10)]
    assert all(sorted(e) == list(range(NUM_INSTANCE)) for e in epochs)
    assert len(set(epochs)) > 1  # reshuffled each epoch, not one fixed order
    # Instance epoch e consumes class-stream positions [3e, 3e + 3): 10 instance epochs
    # sweep 6 whole class epochs, so each class record is used exactly 6 times.
    assert np.bincount(cls[:30], minlength=NUM_CLASS).tolist() == [6] * NUM_CLASS


def test_deterministic_and_seed_dependent(data_dir):
    a = _batches(data_dir, 6)
    path, m = data_dir
    fresh = reader.make_train_dataset(path, m, per_replica_batch=2, seed=7)  # built anew, not memoised
    _assert_same(a, [{k: v.numpy() for k, v in b.items()} for b in fresh.take(6)])
    other = _batches(data_dir, 6, seed=8)
    assert _ids(a, features.CLASS_TOKEN_IDS) != _ids(other, features.CLASS_TOKEN_IDS)


@pytest.mark.parametrize("replicas, per_replica", [(2, 2), (4, 1), (2, 3)])
def test_replica_split_gives_the_same_global_batch(data_dir, replicas, per_replica):
    g = replicas * per_replica
    whole = _batches(data_dir, 5, per_replica_batch=g)
    parts = [_batches(data_dir, 5, per_replica_batch=per_replica, global_batch=g, replica_id=r)
             for r in range(replicas)]
    joined = [{k: np.concatenate([p[s][k] for p in parts]) for k in whole[s]} for s in range(5)]
    _assert_same(joined, whole)


def test_start_step_resumes_exactly(data_dir):
    full = _batches(data_dir, 7, per_replica_batch=1, global_batch=2, replica_id=1)
    resumed = _batches(data_dir, 3, per_replica_batch=1, global_batch=2, replica_id=1, start_step=4)
    _assert_same(resumed, full[4:])


def test_instance_only_data(instance_only_dir):
    path, m = instance_only_dir
    assert m.class_shards == () and not m.has_class
    assert manifest_lib.read_manifest(path) == m
    batches = _batches(instance_only_dir, 2, per_replica_batch=4)
    assert set(batches[0]) == {features.INSTANCE_PIXELS, features.INSTANCE_EMBEDDING,
                               features.INSTANCE_TOKEN_IDS, features.EXAMPLE_POSITION}
    with pytest.raises(ValueError, match="no class examples"):
        reader.read_all_examples(path, m, "class")


def test_reader_rejects_bad_arguments_and_mismatched_shards(data_dir, tmp_path):
    path, m = data_dir
    with pytest.raises(ValueError, match=r"global_batch \(5\) must be a positive multiple of per_replica_batch \(2\)"):
        reader.make_train_dataset(path, m, per_replica_batch=2, global_batch=5, seed=0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\).*got replica_id=2, local_replicas=1"):
        reader.make_train_dataset(path, m, per_replica_batch=2, global_batch=4, replica_id=2, seed=0)
    concepts = (dataclasses.replace(m.concepts[0], num_class=NUM_CLASS + 1),)
    wrong = dataclasses.replace(m, num_class=NUM_CLASS + 1, concepts=concepts)
    with pytest.raises(ValueError, match=r"class shards hold 5 records.*expects indices 0..5"):
        reader.make_train_dataset(path, wrong, per_replica_batch=2, seed=0)
