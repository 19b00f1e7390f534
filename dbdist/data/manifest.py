"""`manifest.json`: what a data directory holds and which model it was made for.

It is written last, so its presence means the shards it lists are complete. The
reader checks it against the model before training (`check_compatible`), because
cached text embeddings are only valid for the text encoder that made them.
"""

import dataclasses
import json
import os

import tensorflow as tf

from dbdist.data import writer

FORMAT_VERSION = 1
MANIFEST_NAME = writer.MANIFEST_NAME


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """Contents of a data directory made by `python -m dbdist.make_tfrecords`."""

    format_version: int = FORMAT_VERSION
    preset: str                     # model preset whose text encoder made the embeddings
    resolution: int                 # side of the square images, in pixels
    embedding_shape: tuple          # (max_length, width) of each text embedding
    max_length: int                 # length of token_ids (== embedding_shape[0])
    num_instance: int
    num_class: int
    instance_prompt: str
    class_prompt: str               # "" when there is no class (prior-preservation) data
    instance_shards: tuple          # shard base names, relative to the data directory
    class_shards: tuple
    created_by: str                 # e.g. "dbdist 0.1.0 make_tfrecords"

    def __post_init__(self):
        # JSON gives lists; keep the dataclass hashable and comparable with tuples.
        for name in ("embedding_shape", "instance_shards", "class_shards"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "embedding_shape", tuple(int(d) for d in self.embedding_shape))
        if len(self.embedding_shape) != 2 or self.embedding_shape[0] != self.max_length:
            raise ValueError(f"embedding_shape must be (max_length={self.max_length}, width), "
                             f"got {self.embedding_shape}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.num_instance < 1 or not self.instance_shards:
            raise ValueError(f"a data directory needs instance examples, got num_instance="
                             f"{self.num_instance} in shards {self.instance_shards}")
        if (self.num_class > 0) != bool(self.class_shards):
            raise ValueError(f"num_class={self.num_class} does not match class_shards={self.class_shards}")

    @property
    def has_class(self):
        return self.num_class > 0

    def shards(self, kind_name):
        """Shard base names of 'instance' or 'class'."""
        return {"instance": self.instance_shards, "class": self.class_shards}[kind_name]

    def num_examples(self, kind_name):
        return {"instance": self.num_instance, "class": self.num_class}[kind_name]


def write_manifest(data_dir, manifest):
    """Writes `<data_dir>/manifest.json` atomically; call it after every shard is in place."""
    text = json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True) + "\n"
    writer.write_bytes_atomically(os.path.join(str(data_dir), MANIFEST_NAME), text.encode("utf-8"))


def read_manifest(data_dir):
    """Reads and checks `<data_dir>/manifest.json`, including that its shards exist."""
    data_dir = str(data_dir)
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{data_dir} has no {MANIFEST_NAME}; "
                                "run python -m dbdist.make_tfrecords first")
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read()
    try:
        fields = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(fields).__name__}")
    if "format_version" in fields and fields["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {fields['format_version']!r} is not supported; "
                         f"this dbdist reads version {FORMAT_VERSION} (remake the data directory)")
    known = [f.name for f in dataclasses.fields(Manifest)]
    missing = sorted(set(known) - set(fields))
    if missing:
        raise ValueError(f"{path}: missing fields {', '.join(missing)}")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown fields {', '.join(unknown)}; expected only {', '.join(known)}")
    try:
        manifest = Manifest(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
    absent = [name for name in manifest.instance_shards + manifest.class_shards
              if not tf.io.gfile.exists(os.path.join(data_dir, name))]
    if absent:
        raise FileNotFoundError(f"{path} lists shards that do not exist in {data_dir}: {', '.join(absent)}")
    return manifest


def check_compatible(manifest, *, preset, resolution, embedding_shape, data_dir=None):
    """Raises ValueError if the data was made for another preset, resolution or text encoder."""
    made = (manifest.preset, manifest.resolution, tuple(manifest.embedding_shape))
    wanted = (preset, int(resolution), tuple(int(d) for d in embedding_shape))
    if made == wanted:
        return
    where = f"data_dir {data_dir}" if data_dir else "the data"
    raise ValueError(f"{where} was made for preset '{made[0]}' at {made[1]} px with embeddings "
                     f"{made[2]}; the model is '{wanted[0]}' at {wanted[1]} px with {wanted[2]}")
