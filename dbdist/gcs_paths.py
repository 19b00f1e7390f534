"""Checks on gs:// paths before any work starts.

TensorFlow's gs:// file system reports a missing bucket late and badly: reads fail
with an HTTP 404, writes only when the file is closed, and `tf.io.gfile.makedirs`
on a missing bucket retries forever. So every command checks, first thing, that the
bucket of each gs:// flag exists.
"""

import tensorflow as tf

from dbdist.errors import MissingInputError, UserError


def bucket_of(path):
    """'b' for 'gs://b/x/y'; None for a local path."""
    path = str(path)
    if not path.startswith("gs://"):
        return None
    return path[len("gs://"):].split("/", 1)[0]


def check_buckets(**paths):
    """Raises if a gs:// path (given by flag name) has a malformed or missing bucket."""
    for flag, path in paths.items():
        if not path:
            continue
        bucket = bucket_of(path)
        if bucket is None:
            continue
        if not bucket:
            raise UserError(f"--{flag}={path}: expected gs://<bucket>/<path>")
        if not tf.io.gfile.exists(f"gs://{bucket}"):
            raise MissingInputError(
                f"--{flag}={path}: bucket gs://{bucket} does not exist (or these credentials cannot see it); "
                f"create it with `gcloud storage buckets create gs://{bucket}` or fix the path")
