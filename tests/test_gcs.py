"""dbdist end to end on gs:// against a local GCS emulator (tests/gcs_emulator.py), no mocks.

Images in a bucket -> class images drawn into the bucket -> records in the bucket ->
train with checkpoints and export in the bucket -> resume from them. Each command
runs as users run it, in a fresh process whose gs:// I/O goes through TensorFlow's
own GCS file system to the emulator. The end-to-end run is `slow` (make test-all); the fast
tier keeps the missing-bucket refusal.
"""

import json
import re
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "dbdist-e2e"
TIMEOUT = 900  # s per command; a hang must fail the test
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}  # 3: dbdist's own default (dbdist/quiet.py)


def _run(gcs, module, **flags):
    argv = [sys.executable, "-m", module] + [f"--{k}={v}" for k, v in flags.items()]
    return gcs.run(argv, env=ENV, timeout=TIMEOUT, cwd=REPO)


def _ok(gcs, module, **flags):
    result = _run(gcs, module, **flags)
    assert result.returncode == 0, f"{module} exited {result.returncode}:\n{result.stderr[-6000:]}\n{gcs.server_log()[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def bucket(gcs_emulator, sample_images):
    bucket = gcs_emulator.create_bucket(BUCKET)
    for folder, name in ((sample_images[0], "images/sks"), (sample_images[1], "images/ball")):
        for path in sorted(pathlib.Path(folder).iterdir()):
            bucket.blob(f"{name}/{path.name}").upload_from_filename(str(path))
    bucket.blob("images/sks/instance-000.txt").upload_from_string("a photo of sks ball on a table")
    return bucket


def _names(bucket, prefix):
    return sorted(b.name[len(prefix):] for b in bucket.client.list_blobs(bucket.name, prefix=prefix))


@pytest.fixture(scope="module")
def records(gcs_emulator, bucket, vocab_path):
    log = _ok(gcs_emulator, "dbdist.make_tfrecords", model="tiny", vocab_path=vocab_path,
              instance_dir=f"gs://{BUCKET}/images/sks", instance_prompt="a photo of sks ball",
              class_dir=f"gs://{BUCKET}/images/ball", class_prompt="a photo of ball", num_class_images=5,
              class_num_steps=2, class_batch_size=1, output_dir=f"gs://{BUCKET}/records", max_shard_mb=0.005)
    return f"gs://{BUCKET}/records", log


@pytest.mark.slow  # the gs:// end-to-end run: make test-all
def test_class_images_and_records_land_in_the_bucket(records, bucket):
    generated = [n for n in _names(bucket, "images/ball/") if re.fullmatch(r"class-\d{5}-[0-9a-f]{10}\.png", n)]
    assert len(generated) == 1 and generated[0].endswith(".png")  # 4 given + 1 drawn = 5
    names = _names(bucket, "records/")
    assert "manifest.json" in names and not [n for n in names if n.startswith(".tmp-")]
    manifest = json.loads(bucket.blob("records/manifest.json").download_as_bytes())
    assert (manifest["num_instance"], manifest["num_class"]) == (3, 5)
    assert len(manifest["instance_shards"]) >= 2  # bounded shards, each a separate object
    assert set(manifest["instance_shards"] + manifest["class_shards"]) <= set(names)


@pytest.mark.slow  # the gs:// end-to-end run: make test-all
def test_verify_reads_every_record_from_the_bucket(gcs_emulator, records):
    out = _ok(gcs_emulator, "tfrecords_tools.verify", data_dir=records[0])
    assert "OK" in out and "8 records" in out


@pytest.mark.slow  # the gs:// end-to-end run: make test-all
def test_train_checkpoints_exports_and_resumes_in_the_bucket(gcs_emulator, records, bucket, vocab_path):
    run = f"gs://{BUCKET}/run"
    flags = dict(data_dir=records[0], output_dir=run, model="tiny", global_batch_size=2, learning_rate=1e-3,
                 checkpoint_every=1, log_every=1)
    _ok(gcs_emulator, "dbdist.train", max_train_steps=2, **flags)
    names = _names(bucket, "run/")
    assert {"config.json", "metrics.jsonl", "export/unet.h5", "loss_curve.png", "export/model.safetensors",
            "export/diffusers/unet/diffusion_pytorch_model.safetensors"} <= set(names)
    assert any(n.startswith("checkpoints/ckpt-2") for n in names)
    first_export = bucket.blob("run/export/unet.h5").download_as_bytes()
    log = _ok(gcs_emulator, "dbdist.train", max_train_steps=3, **flags)
    assert f"resumed from {run}/checkpoints/ckpt-2 at step 2" in log
    steps = [json.loads(line)["step"] for line in bucket.blob("run/metrics.jsonl").download_as_text().splitlines()]
    assert steps == [1, 2, 3]
    assert bucket.blob("run/export/unet.h5").download_as_bytes() != first_export  # trained one step more
    # The single-file export, read back from the bucket as --weights.
    _ok(gcs_emulator, "dbdist.generate", model="tiny", weights=f"{run}/export/model.safetensors", vocab_path=vocab_path,
        prompt="a photo of sks ball", num_images=1, num_steps=2, output_dir=f"gs://{BUCKET}/samples")
    assert "samples/image_000.png" in _names(bucket, "")


def test_missing_bucket_is_a_clear_error_not_a_hang(gcs_emulator, sample_images, vocab_path):
    result = _run(gcs_emulator, "dbdist.make_tfrecords", model="tiny", vocab_path=vocab_path,
                  instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
                  output_dir="gs://no-such-dbdist-bucket/records")
    assert result.returncode != 0
    # One line for the user (dbdist/errors.py), not a traceback.
    assert result.stderr.startswith("dbdist.make_tfrecords: error: --output_dir=gs://no-such-dbdist-bucket/records: "
                                    "bucket gs://no-such-dbdist-bucket does not exist"), result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
