"""Read and write `.safetensors` files (local or gs://) with the `safetensors` package's numpy API.

No PyTorch: `safe_open(..., framework="np")` hands out numpy arrays (fp16, bf16 through ml_dtypes,
fp32). Reading opens the file once and takes only the tensors asked for, so a 4 GB single-file
checkpoint is never held whole; a gs:// file is first copied to a local temporary file.
"""

import contextlib
import json
import os
import struct
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from dbdist.weights import remote_files

# A .safetensors file starts with the little-endian u64 length of its JSON header.
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path):
    """{key: (dtype string, shape)} of a local or gs:// .safetensors file, without reading tensors.

    Raises ValueError naming the file when it is not a safetensors file."""
    with remote_files.local_copy(path) as local:
        with open(local, "rb") as f:
            head = f.read(_HEADER_LENGTH_BYTES)
            length = struct.unpack("<Q", head)[0] if len(head) == _HEADER_LENGTH_BYTES else -1
            if not 0 < length <= _MAX_HEADER_BYTES:
                raise ValueError(f"{path}: not a .safetensors file (no JSON header at its start)")
            try:
                header = json.loads(f.read(length))
            except ValueError as err:
                raise ValueError(f"{path}: not a .safetensors file (its header is not JSON: {err})") from err
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


@contextlib.contextmanager
def open_tensors(path):
    """Yields (keys, get) for a local or gs:// file: `get(key)` -> numpy array, read on demand."""
    with remote_files.local_copy(path) as local:
        try:
            handle = safe_open(local, framework="np")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{path}: not a readable .safetensors file ({err})") from err
        with handle:
            yield set(handle.keys()), handle.get_tensor


def write(tensors, path, metadata=None):
    """Writes {key: numpy array} to `path` (local or gs://) under a temporary name, then renames it."""
    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        remote_files.move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
