"""python -m tfrecords_tools.inspect --data_dir=D: what a record directory holds, as JSON.

How to run:
  python -m tfrecords_tools.inspect --data_dir=gs://bucket/records
What to expect: the manifest (preset, resolution, record format, latent shape,
whether flipped latents are cached, the weights and fingerprints of the networks
that encoded the records), the prompt table (prompts, bytes), each concept's prompts and source folders
with its record counts as found in the shards beside the manifest's, and per
kind: records, distinct prompts (captions may differ per image), stored image
sizes (pixel records) or latent statistics (latent records), and bytes per shard.
Records are read through the trainer's reader and decoder (`dbdist.data`), one at
a time; a damaged shard fails naming it (`tfrecords_tools.verify` says which record).
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import collections
import json
import os

import numpy as np
import tensorflow as tf
from absl import flags

from dbdist import common_flags, errors
from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.prompt_table import KIND_NAME as PROMPTS
from dbdist.data.reader import read_kind, read_prompt_table

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("data_dir",):
    flags.declare_key_flag(_shared_flag)

# Prompts listed per kind, most frequent first (captioned sets may have one per image).
MAX_PROMPTS = 20


def _shard_bytes(data_dir, manifest, kind_name):
    return {name: int(tf.io.gfile.stat(os.path.join(data_dir, name)).length) for name in manifest.shards(kind_name)}


def _describe_kind(data_dir, manifest, kind_name, table):
    """Records, prompts, stored shapes and bytes of one kind, and its records per concept."""
    records, concepts = read_kind(data_dir, manifest, kind_name)
    prompts = collections.Counter()
    heights, widths, means = [], [], []
    for record in records:
        example = features.decode_example(record, manifest.layout)
        prompts[table.prompts[int(example["prompt_id"])]] += 1
        if "image" in example:
            heights.append(int(example["image"].shape[0]))
            widths.append(int(example["image"].shape[1]))
        else:
            means.append(example["latent_mean"].numpy())
    shard_bytes = _shard_bytes(data_dir, manifest, kind_name)
    summary = {
        "records": int(records.shape[0]),
        "distinct_prompts": len(prompts),
        "prompts": dict(prompts.most_common(MAX_PROMPTS)),
    }
    if heights:
        summary["image_shapes"] = {"min_height": min(heights), "max_height": max(heights),
                                   "min_width": min(widths), "max_width": max(widths)}
    if means:
        summary["latent_shape"] = list(means[0].shape)
        summary["latent_mean_stats"] = {"mean": float(np.mean(means)), "std": float(np.std(means))}
    summary["shard_bytes"] = shard_bytes
    summary["total_bytes"] = sum(shard_bytes.values())
    per_concept = np.bincount(concepts, minlength=len(manifest.concepts)).tolist()
    return summary, per_concept


def describe(data_dir):
    """A JSON-able summary of the directory (the command prints it; tests read it)."""
    data_dir = str(data_dir)
    manifest = read_manifest(data_dir)
    summary = {
        "data_dir": data_dir,
        "preset": manifest.preset,
        "resolution": manifest.resolution,
        "embedding_shape": list(manifest.embedding_shape),
        "record_format": manifest.record_format,
        "latent_shape": list(manifest.latent_shape),
        "flipped_latents": manifest.flipped_latents,
        "created_by": manifest.created_by,
        "weights": manifest.weights,
        "encoder_fingerprints": manifest.fingerprints,
        "concepts": [],
        "kinds": {},
    }
    table = read_prompt_table(data_dir, manifest)
    table_bytes = _shard_bytes(data_dir, manifest, PROMPTS)
    summary["prompt_table"] = {"prompts": len(table), "shard_bytes": table_bytes,
                               "total_bytes": sum(table_bytes.values())}
    summary["total_bytes"] = summary["prompt_table"]["total_bytes"]
    found = {}
    for kind_name in features.KIND_NAMES:
        if manifest.num_examples(kind_name):
            summary["kinds"][kind_name], found[kind_name] = _describe_kind(data_dir, manifest, kind_name, table)
            summary["total_bytes"] += summary["kinds"][kind_name]["total_bytes"]
    for c, concept in enumerate(manifest.concepts):
        entry = {"instance_prompt": concept.instance_prompt, "class_prompt": concept.class_prompt,
                 "instance_dir": concept.instance_dir, "class_dir": concept.class_dir}
        for kind_name in features.KIND_NAMES:
            entry[kind_name] = {"manifest": getattr(concept, f"num_{kind_name}"),
                                "records": found[kind_name][c] if kind_name in found else 0}
        summary["concepts"].append(entry)
    return summary


def main(argv):
    del argv
    common_flags.require("data_dir")
    print(json.dumps(describe(common_flags.DATA_DIR.value), indent=2))


if __name__ == "__main__":
    errors.run(main)
