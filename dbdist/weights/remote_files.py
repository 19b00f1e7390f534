"""Local copies of files that may live in GCS (gs://) or another tf.io.gfile scheme.

h5py needs a local file. TensorFlow is imported only when a path has a
scheme, so model code and weight loading still run under the JAX backend.
"""

import contextlib
import os
import shutil
import tempfile


def is_remote(path):
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # Only remote paths need it.

    return tf.io.gfile


def exists(path):
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


@contextlib.contextmanager
def local_copy(path):
    """Yields a local path holding the file's bytes."""
    path = str(path)
    if not is_remote(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        yield path
        return
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        gfile.copy(path, local)
        yield local


def move_into_place(local_tmp, path):
    """Moves a finished local file to `path` (local or remote) so it appears whole."""
    path = str(path)
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        staged = f"{path}.tmp-{os.getpid()}"
        shutil.copyfile(local_tmp, staged)
        os.replace(staged, path)
        return
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path))
    staged = f"{path}.tmp-{os.getpid()}"
    gfile.copy(local_tmp, staged, overwrite=True)
    gfile.rename(staged, path, overwrite=True)
