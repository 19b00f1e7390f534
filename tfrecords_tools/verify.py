"""python -m tfrecords_tools.verify --data_dir=D: reads every record and checks it.

How to run:
  python -m tfrecords_tools.verify --data_dir=gs://bucket/records
What to expect: each shard the manifest lists is read record by record and every
record fully decoded with the trainer's decoders: first the prompt table
(`features.decode_prompts`: prompt ids unique and 0..n-1, utf-8 prompts, token ids
within the vocabulary, embeddings of the manifest's shape and finite), then the
examples (`features.decode_example`: PNG or latents), checked against their shard
and the manifest: kind, concept, index (unique, 0..n-1 per kind), prompt id within
the table, counts per concept and kind, finite floats. Shards the manifest does not
list and temporary files are reported as warnings. The first fault is printed as
  FAULT: <shard path> record <i>: <what is wrong>
and the command exits with status 1; a clean directory prints "OK: ..." and exits 0.
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf
from absl import flags
from google.protobuf.message import DecodeError

from dbdist import common_flags, errors
from dbdist.config import model_config
from dbdist.data import features, writer
from dbdist.data.manifest import MANIFEST_NAME, read_manifest
from dbdist.data.prompt_table import KIND_NAME as PROMPTS
from dbdist.data.reader import tf_error_text

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("data_dir",):
    flags.declare_key_flag(_shared_flag)

_LIST_OF = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """A fault or a warning: the file, the record's position in it (None: the whole file), what."""

    path: str
    message: str
    record: int = None

    def __str__(self):
        where = self.path if self.record is None else f"{self.path} record {self.record}"
        return f"{where}: {self.message}"


@dataclasses.dataclass
class Verification:
    """What `verify` found: the first fault (None if the directory is sound) and the warnings."""

    data_dir: str
    fault: Finding = None
    warnings: list = dataclasses.field(default_factory=list)
    num_records: int = 0   # examples
    num_prompts: int = 0   # rows of the prompt table
    num_shards: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # {kind: [records per concept]}
    record_format: str = ""  # e.g. "pixels, 64 px"

    @property
    def ok(self):
        return self.fault is None

    def summary(self):
        kinds = ", ".join(f"{kind} {sum(n)}" for kind, n in self.counts.items() if sum(n))
        return (f"OK: {self.num_records} records and {self.num_prompts} prompts in {self.num_shards} shards of {self.data_dir} "
                f"({self.record_format}; {kinds}; {len(self.counts.get('instance', ()))} concept(s)); "
                f"{len(self.warnings)} warning(s)")


def _check_fields(serialized, spec):
    """Presence, list type and length of each feature of `spec` (clearer than parse errors)."""
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except DecodeError as err:
        return f"not a tf.train.Example ({err})"
    for key, fixed in spec.items():
        if key not in feature:
            return f"missing field '{key}'"
        wanted, found = _LIST_OF[fixed.dtype], feature[key].WhichOneof("kind")
        if found != wanted:
            return f"field '{key}' is a {found or 'empty feature'}, expected a {wanted}"
        count, expected = len(getattr(feature[key], wanted).value), int(np.prod(fixed.shape))
        if count != expected:
            return f"field '{key}' has {count} values, expected {expected}"
    return None


class _RecordChecker:
    """Checks records one at a time and keeps what must agree across them (indices, counts)."""

    def __init__(self, manifest):
        self.manifest, self.layout = manifest, manifest.layout
        self.spec = features.feature_spec(self.layout)
        self.prompt_spec = features.prompt_feature_spec(self.layout)
        self.prompt_ids = set()
        try:
            self.vocab_size = model_config(manifest.preset).text_encoder.vocab_size
        except ValueError:
            self.vocab_size = None  # an unknown preset: token ids are checked for sign only
        num_concepts = len(manifest.concepts)
        self.counts = {kind: [0] * num_concepts for kind in features.KIND_NAMES}
        self.seen = {kind: {} for kind in features.KIND_NAMES}  # index -> (path, record)

    def check_prompt(self, serialized):
        """None, or what is wrong with one record of the prompt table."""
        problem = _check_fields(serialized, self.prompt_spec)
        if problem:
            return problem
        try:
            row = {k: v.numpy()[0] for k, v in features.decode_prompts([serialized], self.layout).items()}
        except tf.errors.OpError as err:
            return f"does not decode: {tf_error_text(err)}"
        prompt_id, total = int(row["prompt_id"]), self.manifest.num_prompts
        if not 0 <= prompt_id < total:
            return f"prompt_id {prompt_id} is outside 0..{total - 1} (the manifest's num_prompts={total})"
        if prompt_id in self.prompt_ids:
            return f"prompt_id {prompt_id} repeats an earlier row of the prompt table"
        self.prompt_ids.add(prompt_id)
        try:
            row["prompt"].decode("utf-8")
        except UnicodeDecodeError as err:
            return f"prompt is not utf-8 ({err})"
        ids = row["token_ids"]
        if ids.min() < 0 or (self.vocab_size and ids.max() >= self.vocab_size):
            return (f"token_ids must lie in 0..{(self.vocab_size or 0) - 1} (preset {self.manifest.preset}), "
                    f"got {ids.min()}..{ids.max()}")
        if not np.all(np.isfinite(row["embedding"])):
            return f"text_embedding holds {np.sum(~np.isfinite(row['embedding']))} NaN/Inf values"
        return None

    def check(self, serialized, kind_name, path, position):
        """None, or what is wrong with one record of a `kind_name` shard."""
        if kind_name == PROMPTS:
            return self.check_prompt(serialized)
        problem = _check_fields(serialized, self.spec)
        if problem:
            return problem
        try:
            example = {k: v.numpy() for k, v in features.decode_example(serialized, self.layout).items()}
        except tf.errors.OpError as err:
            return f"does not decode: {tf_error_text(err)}"
        kind, expected_kind = int(example["kind"]), features.KIND_NAMES.index(kind_name)
        if kind != expected_kind:
            name = features.KIND_NAMES[kind] if kind in (0, 1) else "unknown"
            return (f"kind is {kind} ({name}), expected {expected_kind} ({kind_name}): the manifest lists "
                    f"this shard as {kind_name}")
        concept, concepts = int(example["concept"]), self.manifest.concepts
        if not 0 <= concept < len(concepts):
            return f"concept is {concept}; the manifest has concepts 0..{len(concepts) - 1}"
        index, total = int(example["index"]), self.manifest.num_examples(kind_name)
        if not 0 <= index < total:
            return f"index {index} is outside 0..{total - 1} (the manifest's num_{kind_name}={total})"
        if index in self.seen[kind_name]:
            other_path, other = self.seen[kind_name][index]
            return f"{kind_name} index {index} repeats {other_path} record {other}"
        prompt_id = int(example["prompt_id"])
        if not 0 <= prompt_id < self.manifest.num_prompts:
            return f"prompt_id {prompt_id} is outside the prompt table's 0..{self.manifest.num_prompts - 1}"
        self.seen[kind_name][index] = (path, position)
        self.counts[kind_name][concept] += 1
        expected = getattr(concepts[concept], f"num_{kind_name}")
        if self.counts[kind_name][concept] > expected:
            return (f"more {kind_name} records of concept {concept} than its num_{kind_name}={expected} "
                    "in the manifest")
        return self._check_values(example)

    def _check_values(self, example):
        for key, value in example.items():
            if getattr(value, "dtype", None) == np.float32 and not np.all(np.isfinite(value)):
                return f"{key} holds {np.sum(~np.isfinite(value))} NaN/Inf values"
        if "image" in example:
            height, width = example["image"].shape[:2]
            limit = round(features.MAX_STORED_ASPECT * self.layout.resolution)
            if max(height, width) > limit:
                return f"image is {height}x{width}; the longer side may be at most {limit} px"
        return None

    def finish(self, manifest_path):
        """A fault if the prompt table, a kind or a concept has fewer records than the manifest counts."""
        if len(self.prompt_ids) < self.manifest.num_prompts:
            missing = sorted(set(range(self.manifest.num_prompts)) - self.prompt_ids)
            return Finding(manifest_path, f"counts {self.manifest.num_prompts} prompts; the prompt table holds "
                           f"{len(self.prompt_ids)} (missing prompt ids {missing[:10]}"
                           f"{'...' if len(missing) > 10 else ''})")
        for kind_name in features.KIND_NAMES:
            for c, concept in enumerate(self.manifest.concepts):
                expected = getattr(concept, f"num_{kind_name}")
                if self.counts[kind_name][c] < expected:
                    missing = sorted(set(range(self.manifest.num_examples(kind_name))) - set(self.seen[kind_name]))
                    return Finding(manifest_path, f"counts {expected} {kind_name} records of concept {c}; the "
                                   f"shards hold {self.counts[kind_name][c]} (missing {kind_name} indices "
                                   f"{missing[:10]}{'...' if len(missing) > 10 else ''})")
        return None


def _verify_shard(path, kind_name, checker):
    """(records read, the first fault or None) of one shard, read record by record."""
    position = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            problem = checker.check(record.numpy(), kind_name, path, position)
            if problem:
                return position, Finding(path, problem, position)
            position += 1
    except tf.errors.DataLossError as err:
        return position, Finding(path, f"unreadable: truncated or corrupted ({tf_error_text(err)})", position)
    except tf.errors.OpError as err:
        return position, Finding(path, f"cannot be read ({tf_error_text(err)})")
    return position, None


def _stray_files(data_dir, manifest):
    """Warnings for shards the manifest does not list and for temporary files."""
    listed = {name for kind in (PROMPTS,) + features.KIND_NAMES for name in manifest.shards(kind)}
    found = []
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if name.startswith(writer.TMP_PREFIX):
            found.append(Finding(path, "temporary file of an interrupted or running write "
                                       "(delete it once no writer is running)"))
        elif name.endswith(writer.SHARD_SUFFIX) and name not in listed:
            found.append(Finding(path, f"shard not listed in {MANIFEST_NAME}; training ignores it"))
    return found


def verify(data_dir):
    """Reads and checks every record of `data_dir`; returns a `Verification` (`.fault` is the first fault)."""
    data_dir = str(data_dir)
    result = Verification(data_dir)
    manifest_path = os.path.join(data_dir, MANIFEST_NAME)
    try:
        manifest = read_manifest(data_dir)
    except (OSError, ValueError, tf.errors.OpError) as err:
        result.fault = Finding(manifest_path, f"unusable manifest: {err}")
        return result
    result.record_format = f"{manifest.record_format}, {manifest.resolution} px"
    result.warnings = _stray_files(data_dir, manifest)
    checker = _RecordChecker(manifest)
    result.counts = checker.counts
    for kind_name in (PROMPTS,) + features.KIND_NAMES:  # the table first: examples point into it
        for name in manifest.shards(kind_name):
            count, fault = _verify_shard(os.path.join(data_dir, name), kind_name, checker)
            if kind_name == PROMPTS:
                result.num_prompts += count
            else:
                result.num_records += count
            if fault:
                result.fault = fault
                return result
            result.num_shards += 1
    result.fault = checker.finish(manifest_path)
    return result


def main(argv):
    del argv
    common_flags.require("data_dir")
    result = verify(common_flags.DATA_DIR.value)
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    if result.fault:
        print(f"FAULT: {result.fault}")
        sys.exit(1)
    print(result.summary())


if __name__ == "__main__":
    errors.run(main)
