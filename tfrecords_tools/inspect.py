"""python -m tfrecords_tools.inspect --data_dir=D: what a record directory holds.

Prints the manifest's counts, prompts, resolution and embedding shape, then
reads every record through the same feature spec the trainer uses and prints
counts per kind, bytes per shard and the source images.
"""

import json

import tensorflow as tf
from absl import app, flags

from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import read_all_examples

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "A directory made by python -m dbdist.make_tfrecords (local or gs://).")


def describe(data_dir):
    """A JSON-able summary of the directory (also used by tests)."""
    manifest = read_manifest(data_dir)
    summary = {
        "preset": manifest.preset,
        "resolution": manifest.resolution,
        "embedding_shape": list(manifest.embedding_shape),
        "kinds": {},
    }
    for kind in features.KIND_NAMES:
        shards = manifest.shards(kind)
        if not shards:
            continue
        examples = read_all_examples(data_dir, manifest, kind)
        summary["kinds"][kind] = {
            "records": int(len(examples["index"])),
            "prompts": sorted(set(examples["prompt"])),
            "sources": list(examples["source"]),
            "shard_bytes": {s: tf.io.gfile.stat(f"{data_dir}/{s}").length for s in shards},
        }
    return summary


def main(argv):
    del argv
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    print(json.dumps(describe(FLAGS.data_dir), indent=2))


if __name__ == "__main__":
    app.run(main)
