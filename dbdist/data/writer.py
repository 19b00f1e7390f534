"""Everything that writes into a data directory: shards, atomic files, stale cleanup.

A data directory is complete only when `manifest.json` exists, so writers lay files
down under a temporary name and rename them, remove the outputs of an earlier run
before writing, and leave the manifest to be written last (by the caller).
All I/O goes through tf.io.gfile so `gs://` directories work as local ones.
"""

import os
import uuid

import tensorflow as tf

# Name of the file that marks a data directory as complete (read by `manifest`).
MANIFEST_NAME = "manifest.json"
# Files being written carry this prefix until renamed; stale ones are safe to delete.
TMP_PREFIX = ".tmp-"
SHARD_SUFFIX = ".tfrecord"


def temp_path(path):
    """A temporary sibling of `path` (same directory, so the rename stays on one filesystem)."""
    path = str(path)
    # The random part keeps two processes writing the same target from clobbering each other.
    name = f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{os.path.basename(path)}"
    return os.path.join(os.path.dirname(path), name)


def write_bytes_atomically(path, data: bytes):
    """Writes `data` to `path` so that `path` is either absent, old, or complete."""
    path = str(path)
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = temp_path(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


class ShardWriter:
    """Streams serialized records into shards of at most `max_shard_bytes` each.

    Shards are `<kind>-00000.tfrecord`, `<kind>-00001.tfrecord`, ...; each is written
    under a temporary name and renamed only once closed, so a shard that exists is
    complete (the directory as a whole is complete only once the manifest is written).
    Memory stays at one record: nothing is buffered beyond TFRecordWriter's own.
    """

    def __init__(self, output_dir, kind_name, max_shard_bytes):
        if not kind_name or "/" in kind_name or kind_name.startswith("."):
            raise ValueError(f"kind_name must be a plain name such as 'instance', got {kind_name!r}")
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.output_dir, self.kind_name, self.max_shard_bytes = str(output_dir), kind_name, int(max_shard_bytes)
        self.names = []
        self._out = self._tmp = None
        self._bytes = 0

    def write(self, record: bytes):
        # TFRecord framing adds 16 bytes per record (length, two CRCs).
        size = len(record) + 16
        if self._out is not None and self._bytes + size > self.max_shard_bytes:
            self._close_shard()
        if self._out is None:
            tf.io.gfile.makedirs(self.output_dir)
            name = f"{self.kind_name}-{len(self.names):05d}{SHARD_SUFFIX}"
            self._tmp = temp_path(os.path.join(self.output_dir, name))
            self._out, self._bytes = tf.io.TFRecordWriter(self._tmp), 0
            self.names.append(name)
        self._out.write(record)
        self._bytes += size

    def _close_shard(self):
        self._out.close()
        tf.io.gfile.rename(self._tmp, os.path.join(self.output_dir, self.names[-1]), overwrite=True)
        self._out = self._tmp = None

    def close(self):
        """Closes the last shard; returns the shard base names, in order."""
        if self._out is not None:
            self._close_shard()
        return tuple(self.names)

    def abort(self):
        """Drops the shard being written (its temp file); finished shards stay until the next cleanup."""
        if self._out is not None:
            self._out.close()
            if tf.io.gfile.exists(self._tmp):
                tf.io.gfile.remove(self._tmp)
            self._out = self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()


def remove_stale_outputs(output_dir):
    """Deletes the manifest, shards and temp files an earlier run left in `output_dir`.

    Call before writing new shards, so that a rerun that fails halfway never leaves an
    old manifest beside a mix of old and new shards that would look complete.
    Other files and sub-directories are left alone.
    """
    output_dir = str(output_dir)
    if not tf.io.gfile.isdir(output_dir):
        return
    # The manifest goes first: if a later delete fails, the directory already reads as incomplete.
    manifest_path = os.path.join(output_dir, MANIFEST_NAME)
    if tf.io.gfile.exists(manifest_path):
        tf.io.gfile.remove(manifest_path)
    for name in tf.io.gfile.listdir(output_dir):
        name = name.rstrip("/")
        path = os.path.join(output_dir, name)
        stale = name.endswith(SHARD_SUFFIX) or name.startswith(TMP_PREFIX)
        if stale and not tf.io.gfile.isdir(path):
            tf.io.gfile.remove(path)
