"""python -m dbdist.make_tfrecords: instance/class images + prompts -> sharded TFRecords.

How to run (tiny demo):
  python -m dbdist.make_tfrecords --instance_dir=imgs/sks --instance_prompt="a photo of sks ball" \
      --class_dir=imgs/ball --class_prompt="a photo of ball" --num_class_images=8 \
      --output_dir=/tmp/db/records --model=tiny
Several subjects: --concepts_file=concepts.json (see dbdist/data/concepts.py).
What to expect: missing class images drawn into --class_dir first (on every replica
of --strategy; a rerun draws only what is missing), then `prompts-*.tfrecord`,
`instance-*.tfrecord`, `class-*.tfrecord` and, written last, `manifest.json`. Each
distinct prompt (or sidecar .txt caption) is encoded by the preset's text encoder and
stored once in the prompt table, which examples point into, so training never runs
the text encoder; with --cache_latents the VAE posterior is stored with each example,
so training skips the VAE.
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

from absl import app, flags, logging

import dbdist
from dbdist import common_flags, errors, instance_flags  # noqa: F401 (--instance_dir)
from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig
from dbdist.data import concepts as concepts_lib
from dbdist.data import features, writer
from dbdist.data.manifest import ConceptCounts, Manifest, write_manifest
from dbdist.data.prompt_table import write_prompt_table
from dbdist.data.record_pipeline import EncodeSettings, RecordPipeline, Source
from dbdist.errors import UserError
from dbdist.gcs_paths import check_buckets
from dbdist.progress import Progress
from dbdist.formats.tokenizer_files import command_tokenizer
from dbdist.weights.fingerprint import encoding_networks, fingerprints_of
from dbdist.weights.pretrained import load_networks

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("model", "resolution", "weights", "vocab_path", "output_dir", "seed", "random_flip", "strategy", "num_cpu_devices", "tpu",
                     "instance_dir"):
    flags.declare_key_flag(_shared_flag)

FLAGS = flags.FLAGS
flags.DEFINE_string("instance_prompt", None, 'Prompt naming the subject, e.g. "a photo of sks dog".')
flags.DEFINE_string("class_dir", "", "Folder of class images for prior preservation; empty trains on instance images only.")
flags.DEFINE_string("class_prompt", "", 'Prompt of the class, e.g. "a photo of dog"; required with --class_dir.')
flags.DEFINE_string("concepts_file", "", "JSON list of {instance_dir, instance_prompt, class_dir, class_prompt[, num_class_images]} "
                    "for several subjects; replaces the four flags above.")
flags.DEFINE_integer("num_class_images", 0, "Top each class folder up to this many images drawn by the base model (0: use what is there).")
flags.DEFINE_integer("class_num_steps", 50, "DDIM steps per class image.")
flags.DEFINE_float("class_guidance_scale", 7.5, "Classifier-free guidance of the class images.")
flags.DEFINE_integer("class_batch_size", 4, "Class images drawn per sampler call over all replicas (a multiple of the replicas).")
flags.DEFINE_bool("cache_latents", False, "Store each image's VAE mean and log-variance (of the centre crop) so training skips the VAE.")
flags.DEFINE_integer("min_size", 0, "Reject images whose shorter side is under this many pixels; 0 upscales small images with a warning.")
flags.DEFINE_float("max_shard_mb", 256.0, "Start a new shard when one would exceed this many MB.")
flags.DEFINE_integer("num_decode_threads", 0, "Threads that read, decode and resize images (0: one per CPU).")


def _concepts():
    if FLAGS.concepts_file:
        given = [name for name in ("instance_dir", "instance_prompt", "class_dir", "class_prompt") if FLAGS[name].value]
        if given:
            raise app.UsageError(f"--concepts_file replaces {', '.join('--' + n for n in given)}; give one or the other")
        return concepts_lib.read_concepts_file(FLAGS.concepts_file, FLAGS.num_class_images)
    common_flags.require("instance_dir", "instance_prompt")
    if not FLAGS.instance_prompt.strip():
        raise UserError("--instance_prompt is blank; expected a prompt naming the subject, e.g. 'a photo of sks dog'")
    if FLAGS.class_dir and not FLAGS.class_prompt.strip():
        raise UserError(f"--class_dir={FLAGS.class_dir} needs --class_prompt (e.g. 'a photo of dog')")
    if FLAGS.class_prompt and not FLAGS.class_dir:
        raise UserError("--class_prompt was given without --class_dir")
    concept = concepts_lib.Concept(FLAGS.instance_dir, FLAGS.instance_prompt, FLAGS.class_dir, FLAGS.class_prompt,
                                   FLAGS.num_class_images if FLAGS.class_dir else 0)
    if FLAGS.num_class_images and not FLAGS.class_dir:
        raise UserError(f"--num_class_images={FLAGS.num_class_images} needs --class_dir (the folder to draw into)")
    return concepts_lib.check_concepts([concept], "flags")


def _check_flags():
    for name in ("num_class_images", "min_size", "num_decode_threads"):
        if FLAGS[name].value < 0:
            raise UserError(f"--{name} must be >= 0, got {FLAGS[name].value}")
    if FLAGS.class_num_steps < 1 or FLAGS.class_batch_size < 1:
        raise UserError(f"--class_num_steps and --class_batch_size must be >= 1, got "
                         f"{FLAGS.class_num_steps}, {FLAGS.class_batch_size}")
    if FLAGS.max_shard_mb <= 0:
        raise UserError(f"--max_shard_mb must be > 0, got {FLAGS.max_shard_mb}")
    model = common_flags.selected_model_config()
    if FLAGS.class_num_steps > model.schedule.num_train_timesteps:  # DDIM would repeat timesteps
        raise UserError(f"--class_num_steps={FLAGS.class_num_steps} is out of range; expected 1 to "
                        f"{model.schedule.num_train_timesteps} (the schedule's training timesteps)")
    # The same checks training will make, so bad settings fail before any work.
    RunConfig(model, DataConfig(), OptimConfig(), TrainConfig(), RuntimeConfig()).validate()
    return model


def _draw_class_images(model, concepts, tokenizer):
    """Stage 2: fills the class folders that lack images; returns False on non-chief workers."""
    from dbdist import class_images
    from dbdist.sampling import Sampler
    from dbdist.training.strategy import is_chief, make_strategy

    settings = class_images.ClassImageSettings(
        num_steps=FLAGS.class_num_steps, guidance_scale=FLAGS.class_guidance_scale,
        global_batch=FLAGS.class_batch_size, seed=FLAGS.seed)
    # One job per class folder (concepts may share one, with one prompt).
    jobs = {}
    for c in concepts:
        key = c.class_dir.rstrip("/")
        if c.num_class_images and c.num_class_images > getattr(jobs.get(key), "num_class_images", 0):
            jobs[key] = c
    # Planned once, before the barrier: after it, other workers are already writing into the folders.
    plans = [(j, class_images.plan(j.class_dir, j.class_prompt, j.num_class_images, settings, model.preset))
             for j in jobs.values()]
    todo = [(job, missing) for job, missing in plans if missing]
    if not todo and FLAGS.strategy != "multi_worker":
        return True
    strategy = make_strategy(FLAGS.strategy, FLAGS.num_cpu_devices, FLAGS.tpu)
    if settings.global_batch % strategy.num_replicas_in_sync:
        raise UserError(f"--class_batch_size {settings.global_batch} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas; use a multiple of {strategy.num_replicas_in_sync}")
    _barrier(strategy)  # every worker has planned before any writes into the shared folders
    if todo:
        with strategy.scope():
            networks = load_networks(model, ("unet", "vae_decoder", "text_encoder"), FLAGS.weights)
        sampler = class_images.DistributedSampler(strategy, model, networks, settings)
        encode = Sampler(model, networks, tokenizer).encode
        for job, missing in todo:
            class_images.fill_class_dir(sampler, job, missing, encode, preset=model.preset)
    _barrier(strategy)  # every worker's images are in place before the chief reads the folders
    return is_chief(strategy)


def _barrier(strategy):
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def main(argv):
    del argv
    # Stage 1: everything that can fail on bad input, before anything is drawn or written.
    common_flags.require("output_dir")
    check_buckets(output_dir=FLAGS.output_dir, concepts_file=FLAGS.concepts_file, weights=FLAGS.weights,
                  vocab_path=FLAGS.vocab_path)
    model = _check_flags()
    concepts = _concepts()
    for c in concepts:
        check_buckets(instance_dir=c.instance_dir, class_dir=c.class_dir)
    tokenizer = command_tokenizer(FLAGS.vocab_path, FLAGS.weights)
    max_length = model.text_encoder.max_length
    for c in concepts:
        for prompt in (c.instance_prompt, c.class_prompt):
            tokenizer.tokenize(prompt, max_length)
    instance_lists = [concepts_lib.list_examples(c.instance_dir, c.instance_prompt) for c in concepts]

    # Stage 2: class images (the base model on every replica of --strategy).
    if not _draw_class_images(model, concepts, tokenizer):
        logging.info("worker done: class images drawn; the chief writes the records")
        return
    class_lists = [concepts_lib.list_examples(c.class_dir, c.class_prompt) if c.has_class else [] for c in concepts]

    # Stage 3: sources and token ids (a caption too long fails here, naming it).
    sources = {"instance": [], "class": []}
    for i, (inst, cls) in enumerate(zip(instance_lists, class_lists)):
        sources["instance"] += [Source(p, prompt, features.KIND_INSTANCE, i) for p, prompt in inst]
        sources["class"] += [Source(p, prompt, features.KIND_CLASS, i) for p, prompt in cls]
    token_ids = {}
    for s in sources["instance"] + sources["class"]:
        if s.prompt not in token_ids:
            try:
                token_ids[s.prompt] = tokenizer.tokenize(s.prompt, max_length, model.text_encoder.pad_token_id)
            except ValueError as err:
                raise UserError(f"{s.path}: {err}") from err

    # Stage 4: records, streamed into bounded shards; the manifest last.
    networks = encoding_networks(FLAGS.cache_latents)
    models = load_networks(model, networks, FLAGS.weights)
    settings = EncodeSettings(
        resolution=model.resolution, cache_latents=FLAGS.cache_latents, random_flip=FLAGS.random_flip,
        min_size=FLAGS.min_size, workers=FLAGS.num_decode_threads)
    # Row i of the prompt table is the i-th distinct prompt (token_ids keeps first-seen order).
    prompts = list(token_ids)
    pipeline = RecordPipeline(settings, {p: i for i, p in enumerate(prompts)},
                              models.vae_encoder if FLAGS.cache_latents else None)
    writer.remove_stale_outputs(FLAGS.output_dir)
    total = len(sources["instance"]) + len(sources["class"])
    progress = Progress(total, "records")
    shards = {}
    try:
        shards["prompts"] = write_prompt_table(FLAGS.output_dir, prompts, token_ids, models.text_encoder.predict_on_batch,
                                               int(FLAGS.max_shard_mb * 2**20))
        for kind_name in ("instance", "class"):
            shards[kind_name] = pipeline.write(FLAGS.output_dir, kind_name, sources[kind_name],
                                               int(FLAGS.max_shard_mb * 2**20), progress)
    except BaseException:
        writer.remove_stale_outputs(FLAGS.output_dir)  # no partial set of shards is left behind
        raise
    finally:
        pipeline.close()
    counts = [ConceptCounts(instance_prompt=c.instance_prompt, class_prompt=c.class_prompt, instance_dir=c.instance_dir,
                            class_dir=c.class_dir, num_instance=len(inst), num_class=len(cls))
              for c, inst, cls in zip(concepts, instance_lists, class_lists)]
    latent_shape = (model.latent_size, model.latent_size, model.vae.latent_channels) if FLAGS.cache_latents else ()
    manifest = Manifest(
        preset=model.preset,
        resolution=model.resolution,
        embedding_shape=model.embedding_shape,
        max_length=max_length,
        pad_token_id=model.text_encoder.pad_token_id,
        record_format=features.LATENTS if FLAGS.cache_latents else features.PIXELS,
        latent_shape=latent_shape,
        flipped_latents=bool(FLAGS.cache_latents and FLAGS.random_flip),
        concepts=tuple(counts),
        num_instance=len(sources["instance"]),
        num_class=len(sources["class"]),
        instance_shards=shards["instance"],
        class_shards=shards["class"],
        prompt_shards=shards["prompts"],
        num_prompts=len(prompts),
        created_by=f"dbdist {dbdist.__version__} make_tfrecords",
        weights=FLAGS.weights,
        encoder_fingerprints=fingerprints_of(models, networks),
    )
    write_manifest(FLAGS.output_dir, manifest)  # last: its presence marks the directory complete
    logging.info("wrote %d instance and %d class %s records (%d concept(s)) to %s", manifest.num_instance,
                 manifest.num_class, manifest.record_format, len(concepts), FLAGS.output_dir)


if __name__ == "__main__":
    errors.run(main)
