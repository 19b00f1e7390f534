"""tfrecords_tools: inspect, verify and preview read records through the trainer's feature spec.

verify's fault tests damage a copy of `records_dir` (3 instance + 4 class records, 1-2 per
shard) and check that the command exits 1 naming the damaged shard and record.
"""

import json
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
from commands import run_command
from PIL import Image

from dbdist.config import model_config
from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import CorruptShardError, read_all_examples
from dbdist.diffusion.ddim import pixels_to_uint8
from dbdist.weights.pretrained import load_networks
from tfrecords_tools import preview, verify
from tfrecords_tools.inspect import describe


def _records(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as out:
        for record in records:
            out.write(record)


def _copy(records_dir, tmp_path):
    return shutil.copytree(records_dir, tmp_path / "copy")


def _shard_with_two_records(data_dir):
    """Path of the first shard holding at least 2 records (the class shards of records_dir)."""
    manifest = read_manifest(data_dir)
    for name in manifest.instance_shards + manifest.class_shards:
        if len(_records(data_dir / name)) >= 2:
            return data_dir / name
    raise AssertionError(f"no shard of {data_dir} holds 2 records; the fixture changed")


def _record_at(data, offset):
    """Which record of a TFRecord file's bytes holds byte `offset` (framing: 8 length, 4 crc, data, 4 crc)."""
    start, record = 0, 0
    while start < len(data):
        (length,) = struct.unpack("<Q", data[start:start + 8])
        if offset < start + 16 + length:
            return record
        start, record = start + 16 + length, record + 1
    raise AssertionError(f"offset {offset} is past the last record")


def _verify_fault(data_dir, capsys):
    """Runs the verify command, expects exit status 1 and returns its FAULT line."""
    with pytest.raises(SystemExit) as exit_info:
        run_command("tfrecords_tools.verify", data_dir=data_dir)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAULT: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_inspect_describes_concepts_kinds_shapes_and_bytes(records_dir):
    summary = json.loads(json.dumps(describe(records_dir)))  # JSON-printable
    assert (summary["preset"], summary["resolution"], summary["embedding_shape"]) == ("tiny", 64, [77, 32])
    assert (summary["record_format"], summary["latent_shape"], summary["flipped_latents"]) == ("pixels", [], False)
    (concept,) = summary["concepts"]
    assert (concept["instance_prompt"], concept["class_prompt"]) == ("a photo of sks ball", "a photo of ball")
    assert concept["instance"] == {"manifest": 3, "records": 3} and concept["class"] == {"manifest": 4, "records": 4}
    instance, cls = summary["kinds"]["instance"], summary["kinds"]["class"]
    assert (instance["records"], cls["records"]) == (3, 4)
    assert instance["prompts"] == {"a photo of sks ball": 3} and cls["prompts"] == {"a photo of ball": 4}
    assert instance["image_shapes"] == {"min_height": 64, "max_height": 64, "min_width": 64, "max_width": 64}
    assert summary["prompt_table"]["prompts"] == 2  # each distinct prompt's embedding stored once
    sizes = {p.name: p.stat().st_size for p in records_dir.glob("*.tfrecord")}
    assert {**instance["shard_bytes"], **cls["shard_bytes"], **summary["prompt_table"]["shard_bytes"]} == sizes
    assert summary["total_bytes"] == sum(sizes.values())


def test_inspect_describes_latent_records(latents_dir):
    summary = describe(latents_dir)
    assert (summary["record_format"], summary["latent_shape"], summary["flipped_latents"]) == ("latents", [8, 8, 4], True)
    assert summary["kinds"]["class"]["latent_shape"] == [8, 8, 4] and "image_shapes" not in summary["kinds"]["class"]
    assert summary["concepts"][0]["class"] == {"manifest": 4, "records": 4}


def test_verify_passes_good_directories(records_dir, latents_dir, capsys):
    for data_dir in (records_dir, latents_dir):
        result = verify.verify(data_dir)
        assert result.ok, result.fault
        assert (result.num_records, result.counts["instance"], result.counts["class"]) == (7, [3], [4])
        assert result.num_prompts == 2
        run_command("tfrecords_tools.verify", data_dir=data_dir)  # no SystemExit: status 0
        assert capsys.readouterr().out.startswith(f"OK: 7 records and 2 prompts in {result.num_shards} shards of {data_dir}")


def test_verify_warns_of_unlisted_shards_and_temp_files(records_dir, tmp_path):
    data_dir = _copy(records_dir, tmp_path)
    shutil.copy(data_dir / "instance-00000.tfrecord", data_dir / "instance-00099.tfrecord")
    (data_dir / ".tmp-0123abcd-class-00002.tfrecord").write_bytes(b"partial")
    result = verify.verify(data_dir)
    assert result.ok, result.fault
    assert sorted(w.path.split("/")[-1] for w in result.warnings) == [".tmp-0123abcd-class-00002.tfrecord",
                                                                    "instance-00099.tfrecord"]


def test_verify_faults_on_a_missing_or_broken_manifest(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    (data_dir / "manifest.json").unlink()
    assert _verify_fault(data_dir, capsys).startswith(f"FAULT: {data_dir}/manifest.json: ")
    (data_dir / "manifest.json").write_text("{not json")
    assert "invalid JSON" in _verify_fault(data_dir, capsys)


def test_verify_names_a_truncated_shard(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    shard = _shard_with_two_records(data_dir)
    last = len(_records(shard)) - 1
    shard.write_bytes(shard.read_bytes()[:-10])
    line = _verify_fault(data_dir, capsys)
    assert line.startswith(f"FAULT: {shard} record {last}: unreadable: truncated or corrupted")


def test_verify_names_the_record_with_a_flipped_byte(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    shard = _shard_with_two_records(data_dir)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # the CRC no longer matches
    shard.write_bytes(bytes(data))
    line = _verify_fault(data_dir, capsys)
    assert line.startswith(f"FAULT: {shard} record {_record_at(data, middle)}: unreadable: truncated or corrupted")


def _without_source(example):
    del example.features.feature[features.SOURCE]


def _short_embedding(example):
    values = example.features.feature[features.EMBEDDING].bytes_list.value
    values[0] = values[0][:-8]  # two float32 values short


def _nan_embedding(example):
    values = example.features.feature[features.EMBEDDING].bytes_list.value
    values[0] = np.float32(np.nan).tobytes() + values[0][4:]


def _repeated_prompt_id(example):
    example.features.feature[features.PROMPT_ID].int64_list.value[0] = 0


def _unknown_prompt_id(example):
    example.features.feature[features.PROMPT_ID].int64_list.value[0] = 2


@pytest.mark.parametrize("shard_of, damage, message", [
    ("example", _without_source, "missing field 'source'"),
    ("example", _unknown_prompt_id, "prompt_id 2 is outside the prompt table's 0..1"),
    ("prompts", _short_embedding, "does not decode: text_embedding: expected 2464 float32 values (77, 32), got 2462"),
    ("prompts", _nan_embedding, "text_embedding holds 1 NaN/Inf values"),
    ("prompts", _repeated_prompt_id, "prompt_id 0 repeats an earlier row of the prompt table"),
])
def test_verify_names_a_record_that_breaks_the_feature_spec(records_dir, tmp_path, capsys, shard_of, damage, message):
    data_dir = _copy(records_dir, tmp_path)
    shard = _shard_with_two_records(data_dir) if shard_of == "example" else _last_prompt_shard(data_dir)
    records = _records(shard)
    damaged = len(records) - 1  # prompt id 1, the last row of the table
    example = tf.train.Example.FromString(records[damaged])
    damage(example)
    _write_records(shard, records[:damaged] + [example.SerializeToString()] + records[damaged + 1:])  # valid framing
    assert _verify_fault(data_dir, capsys) == f"FAULT: {shard} record {damaged}: {message}"


def _last_prompt_shard(data_dir):
    return data_dir / read_manifest(data_dir).prompt_shards[-1]


def test_verify_faults_on_a_missing_or_corrupt_prompt_table(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    shard = _last_prompt_shard(data_dir)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the CRC no longer matches
    shard.write_bytes(bytes(data))
    assert _verify_fault(data_dir, capsys).startswith(f"FAULT: {shard} record ")
    with pytest.raises(CorruptShardError, match=str(shard)):
        read_all_examples(data_dir, read_manifest(data_dir), "instance")
    shard.unlink()
    line = _verify_fault(data_dir, capsys)
    assert line.startswith(f"FAULT: {data_dir}/manifest.json: unusable manifest: ")
    assert line.endswith(f"lists shards that do not exist in {data_dir}: {shard.name}")


def test_verify_names_a_class_record_in_an_instance_shard(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    manifest = read_manifest(data_dir)
    shard = data_dir / manifest.instance_shards[-1]
    records = _records(shard)
    _write_records(shard, records[:-1] + [_records(data_dir / manifest.class_shards[0])[0]])
    line = _verify_fault(data_dir, capsys)
    assert line == (f"FAULT: {shard} record {len(records) - 1}: kind is 1 (class), expected 0 (instance): "
                    "the manifest lists this shard as instance")


def _edit_manifest(data_dir, kind_name, count):
    path = data_dir / "manifest.json"
    fields = json.loads(path.read_text())
    fields[f"num_{kind_name}"] = fields["concepts"][0][f"num_{kind_name}"] = count
    path.write_text(json.dumps(fields))


def test_verify_names_the_first_record_beyond_the_manifests_count(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    _edit_manifest(data_dir, "class", 3)
    # The 4th class record, in the order verify reads them (shards in manifest order).
    where = [(name, i) for name in read_manifest(data_dir).class_shards for i in range(len(_records(data_dir / name)))]
    name, record = where[3]
    line = _verify_fault(data_dir, capsys)
    assert line.startswith(f"FAULT: {data_dir / name} record {record}: ")
    assert "num_class=3" in line


def test_verify_names_the_manifest_when_records_are_missing(records_dir, tmp_path, capsys):
    data_dir = _copy(records_dir, tmp_path)
    _edit_manifest(data_dir, "instance", 4)
    line = _verify_fault(data_dir, capsys)
    assert line == (f"FAULT: {data_dir}/manifest.json: counts 4 instance records of concept 0; the shards hold 3 "
                    "(missing instance indices [3])")


def _read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _tile_image(grid, row, column, side):
    """The picture part of one grid cell (tiles are `side` px wide, captions below)."""
    height = side + preview.CAPTION_HEIGHT
    return grid[row * height:row * height + side, column * side:(column + 1) * side]


def test_preview_tiles_centre_crops_with_captions(records_dir, tmp_path, capsys):
    output = tmp_path / "out" / "preview.png"
    run_command("tfrecords_tools.preview", data_dir=records_dir, output=output, num=5)
    grid = _read_png(output)
    # 5 tiles: instance 0-2 and class 0-1, 3 columns x 2 rows, 64 px images enlarged to 128.
    assert grid.shape == (2 * (128 + preview.CAPTION_HEIGHT), 3 * 128, 3)
    crops = read_all_examples(records_dir, read_manifest(records_dir), "class")["image"]
    expected = np.repeat(np.repeat(crops[1], 2, axis=0), 2, axis=1)  # class 1 is the 5th tile
    np.testing.assert_array_equal(_tile_image(grid, 1, 1, 128), expected)
    caption = grid[128:128 + preview.CAPTION_HEIGHT, :128]
    assert (caption < 100).any() and (caption > 200).any()  # dark text on white
    assert [p.name for p in output.parent.iterdir()] == ["preview.png"]  # no temp file left
    assert "(384x360 px)" in capsys.readouterr().out


def test_preview_decodes_latents_with_the_presets_vae(latents_dir, tmp_path):
    output = tmp_path / "preview.png"
    run_command("tfrecords_tools.preview", data_dir=latents_dir, output=output, num=2, kind="class")
    grid = _read_png(output)
    assert grid.shape == (128 + preview.CAPTION_HEIGHT, 2 * 128, 3)
    means = read_all_examples(latents_dir, read_manifest(latents_dir), "class")["latent_mean"][:2]
    decoder = load_networks(model_config("tiny"), ("vae_decoder",), "").vae_decoder
    decoded = pixels_to_uint8(decoder(means * model_config("tiny").vae.scaling_factor))
    # Same weights, same batch; 1 level of uint8 slack for float reassociation between the two runs.
    for column in range(2):
        expected = np.repeat(np.repeat(decoded[column], 2, axis=0), 2, axis=1).astype(int)
        assert np.abs(_tile_image(grid, 0, column, 128).astype(int) - expected).max() <= 1


def test_preview_of_a_corrupt_shard_fails_and_writes_nothing(records_dir, tmp_path):
    data_dir = _copy(records_dir, tmp_path)
    shard = _shard_with_two_records(data_dir)
    shard.write_bytes(shard.read_bytes()[:-10])
    output = tmp_path / "out" / "preview.png"
    with pytest.raises(CorruptShardError, match=str(shard)):
        run_command("tfrecords_tools.preview", data_dir=data_dir, output=output, num=16)
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_preview_caption_wraps_and_cuts_long_non_latin_prompts():
    prompt = "a photo of sks 犬 " + "wearing a very long scarf " * 10 + "supercalifragilisticexpialidocious" * 3
    tile = preview.captioned_tile(np.zeros((64, 64, 3), np.uint8), "instance 12345, concept 67", prompt)
    assert tile.shape == (128 + preview.CAPTION_HEIGHT, 128, 3)
    caption = tile[128:]
    # Text in every line of the caption, and nothing drawn in the 2 px right margin.
    for line in range(preview.CAPTION_LINES):
        assert (caption[2 + line * preview.LINE_HEIGHT:(line + 1) * preview.LINE_HEIGHT] < 100).any(), line
    assert (caption[:, -2:] == 255).all()
