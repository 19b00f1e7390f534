"""python -m tfrecords_tools.inspect --data_dir=D: what a record directory holds.

Prints the manifest's counts, prompts, resolution and embedding shape, then
reads every record through the same feature spec the trainer uses and prints
counts per kind, bytes per shard and the source images.
"""

import json

import tensorflow as tf
from absl import app

from dbdist import common_flags
from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import read_all_examples



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
    common_flags.require("data_dir")
    print(json.dumps(describe(common_flags.DATA_DIR.value), indent=2))


if __name__ == "__main__":
    app.run(main)
