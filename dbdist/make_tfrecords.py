"""python -m dbdist.make_tfrecords: instance/class images + prompts -> sharded TFRecords.

How to run (tiny demo):
  python -m dbdist.make_tfrecords --instance_dir=imgs/sks --instance_prompt="a photo of sks ball" \
      --class_dir=imgs/ball --class_prompt="a photo of ball" --output_dir=/tmp/db/records --model=tiny
What to expect: `instance-*.tfrecord`, `class-*.tfrecord` and, written last, `manifest.json`.
Each distinct prompt is encoded once by the preset's text encoder and stored
with every example, so training never runs the text encoder.
"""

import os

import numpy as np
from absl import app, flags, logging

import dbdist
from dbdist import common_flags
from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig
from dbdist.data import features, images, writer
from dbdist.data.manifest import Manifest, write_manifest
from dbdist.text.tokenizer import ClipTokenizer, resolve_vocab_path
from dbdist.weights.pretrained import load_networks

FLAGS = flags.FLAGS
flags.DEFINE_string("instance_dir", None, "Folder of the subject's photos (jpg/png/webp/bmp), local or gs://.")
flags.DEFINE_string("instance_prompt", None, 'Prompt naming the subject, e.g. "a photo of sks dog".')
flags.DEFINE_string("class_dir", "", "Folder of class images for prior preservation; empty trains on instance images only.")
flags.DEFINE_string("class_prompt", "", 'Prompt of the class, e.g. "a photo of dog"; required with --class_dir.')
flags.DEFINE_integer("num_shards", 1, "Shards per kind (instance, class); capped at the number of images.")


def _check_flags():
    if not FLAGS.instance_prompt.strip():
        raise ValueError("--instance_prompt is empty; expected a prompt naming the subject, e.g. 'a photo of sks dog'")
    if FLAGS.class_dir and not FLAGS.class_prompt.strip():
        raise ValueError(f"--class_dir={FLAGS.class_dir} needs --class_prompt (e.g. 'a photo of dog')")
    if FLAGS.class_prompt and not FLAGS.class_dir:
        raise ValueError("--class_prompt was given without --class_dir")
    if FLAGS.num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1, got {FLAGS.num_shards}")
    model = common_flags.selected_model_config()
    # The same checks training will make, so bad settings fail before any work.
    RunConfig(model, DataConfig(), OptimConfig(), TrainConfig(), RuntimeConfig()).validate()
    return model


def _load_all(paths, resolution, kind_name):
    logging.info("reading %d %s images", len(paths), kind_name)
    return [images.load_image(path, resolution) for path in paths]


def main(argv):
    del argv
    common_flags.require("instance_dir", "instance_prompt", "output_dir")
    model = _check_flags()
    kinds = [("instance", features.KIND_INSTANCE, FLAGS.instance_dir, FLAGS.instance_prompt)]
    if FLAGS.class_dir:
        kinds.append(("class", features.KIND_CLASS, FLAGS.class_dir, FLAGS.class_prompt))

    # Everything that can fail on bad input happens before anything is written.
    tokenizer = ClipTokenizer(resolve_vocab_path(FLAGS.vocab_path))
    max_length = model.text_encoder.max_length
    token_ids = {prompt: tokenizer.tokenize(prompt, max_length) for _, _, _, prompt in kinds}
    sources = {name: images.list_images(folder) for name, _, folder, _ in kinds}
    pixels = {name: _load_all(paths, model.resolution, name) for name, paths in sources.items()}

    text_encoder = load_networks(model, ("text_encoder",), FLAGS.weights, seed=FLAGS.seed).text_encoder
    prompts = list(token_ids)
    encoded = text_encoder.predict_on_batch(np.stack([token_ids[p] for p in prompts]))
    embeddings = {p: np.asarray(e, dtype=np.float32) for p, e in zip(prompts, encoded)}
    logging.info("encoded %d distinct prompt(s) with the %s text encoder", len(prompts), model.preset)

    writer.remove_stale_outputs(FLAGS.output_dir)
    shards = {}
    for name, kind, _, prompt in kinds:
        records = [
            features.serialize_example(
                image=image,
                prompt=prompt,
                token_ids=token_ids[prompt],
                embedding=embeddings[prompt],
                kind=kind,
                index=i,
                source=os.path.basename(path),
            )
            for i, (image, path) in enumerate(zip(pixels[name], sources[name]))
        ]
        shards[name] = writer.write_shards(FLAGS.output_dir, name, records, FLAGS.num_shards)
    manifest = Manifest(
        preset=model.preset,
        resolution=model.resolution,
        embedding_shape=model.embedding_shape,
        max_length=max_length,
        num_instance=len(pixels["instance"]),
        num_class=len(pixels.get("class", ())),
        instance_prompt=FLAGS.instance_prompt,
        class_prompt=FLAGS.class_prompt,
        instance_shards=shards["instance"],
        class_shards=shards.get("class", ()),
        created_by=f"dbdist {dbdist.__version__} make_tfrecords",
    )
    write_manifest(FLAGS.output_dir, manifest)  # last: its presence marks the directory complete
    logging.info(
        "wrote %d instance and %d class records to %s", manifest.num_instance, manifest.num_class, FLAGS.output_dir
    )


if __name__ == "__main__":
    app.run(main)
