"""python -m dbdist.train: DreamBooth fine-tuning on any tf.distribute strategy, or on the JAX engine.

How to run (the tiny demo; see README for sd-v1 on a GPU, launch/ for TPU VMs and Vertex AI):
  python -m dbdist.train --data_dir=/tmp/db/records --output_dir=/tmp/db/run \
      --model=tiny --max_train_steps=100 --learning_rate=1e-4 --strategy=mirrored --num_cpu_devices=2
What to expect: a progress line every --log_every steps (step, loss, img/s, ETA),
then in output_dir: config.json, metrics.jsonl, tensorboard/, checkpoints/,
loss_curve.png, export/unet.h5 (keras-cv layout), export/diffusers/ and export/model.safetensors
(dbdist/formats/export.py); with --lora_rank, export/lora.safetensors instead (dbdist/lora/). Running
the same command again resumes from the newest checkpoint. Under KERAS_BACKEND=jax (or --engine=jax) the JAX
engine (dbdist/jax_engine/) trains instead, with --strategy=one_device or data_parallel.
"""

from dbdist import engine_select  # noqa: F401 (first: --engine sets KERAS_BACKEND before Keras is imported)
from dbdist import quiet  # noqa: F401 (TensorFlow reads its log level when imported)

import json
import math
import os
import time

import keras
import tensorflow as tf
from absl import flags, logging

from dbdist import common_flags, errors
from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig
from dbdist.data.augment import Augmentation
from dbdist.data.example_noise import NoiseSpec
from dbdist.data.manifest import check_compatible, read_manifest
from dbdist.data.writer import write_bytes_atomically
from dbdist.diffusion.dreambooth_loss import LossSettings
from dbdist.formats.export import EXPORT_DTYPES, export_formats
from dbdist.gcs_paths import check_buckets
from dbdist.lora.adapters import add_adapters
from dbdist.lora.export import export_lora
from dbdist.lora.targets import TEXT_ENCODER, UNET
from dbdist.plots import plot_loss_curve
from dbdist.training import cloud_env
from dbdist.training.checkpointing import check_resume_compatible, check_same_engine
from dbdist.training.metrics_log import MetricsLog, format_duration, read_metrics
from dbdist.training.preemption import Preempted, PreemptionWatcher
from dbdist.training.schedules import SCHEDULES
from dbdist.training.summaries import Summaries
from dbdist.weights.fingerprint import check_same_encoders, load_fingerprints
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5
from dbdist.weights.pretrained import load_networks

# --help lists the shared flags (dbdist/common_flags.py) too, not only this module's.
flags.adopt_module_key_flags(common_flags)

FLAGS = flags.FLAGS
flags.DEFINE_integer("max_train_steps", 400, "Optimisation steps.")
flags.DEFINE_integer("global_batch_size", 1, "Instance examples per step over all replicas; each is paired with one class example.")
flags.DEFINE_integer("grad_accum_steps", 1, "Micro-batches of --global_batch_size summed into one optimizer step.")
flags.DEFINE_integer("steps_per_loop", 1, "Steps inside one tf.function call (fewer host round trips on TPU/GPU).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile each replica's forward/backward pass.")
flags.DEFINE_float("learning_rate", 5e-6, "AdamW learning rate of the UNet.")
flags.DEFINE_enum("lr_schedule", "constant", SCHEDULES, "Learning-rate schedule (decays reach 0 at the last step; polynomial 1e-7).")
flags.DEFINE_integer("lr_warmup_steps", 0, "Linear warm-up steps (constant_with_warmup, linear, cosine, polynomial).")
flags.DEFINE_float("lr_power", 1.0, "Exponent of --lr_schedule=polynomial's decay to 1e-7 (as diffusers).")
flags.DEFINE_float("weight_decay", 1e-2, "AdamW decoupled weight decay.")
flags.DEFINE_float("max_grad_norm", 1.0, "Clip the summed gradients to this global norm.")
flags.DEFINE_float("prior_loss_weight", 1.0, "Weight of the class (prior-preservation) loss.")
flags.DEFINE_float("noise_offset", 0.0, "Offset noise: add this x N(0, 1) per example and latent channel to the noise (diffusers' --noise_offset; 0: none).")
flags.DEFINE_float("snr_gamma", None, "min-SNR-gamma weighting of the instance loss, as diffusers' --snr_gamma (5.0 recommended; unset: plain MSE).")
flags.DEFINE_bool("train_text_encoder", False, "Fine-tune the text encoder too (exports export/text_encoder.h5).")
flags.DEFINE_float("text_encoder_learning_rate", 5e-6, "AdamW learning rate of the text encoder.")
flags.DEFINE_list(
    "train_token_embeddings", [], "Pivotal tuning: train only these words' rows of the text encoder's token embedding "
    "(for example the identifier, sks), at --text_encoder_learning_rate and without weight decay, beside the UNet; the "
    "rest of the text encoder stays frozen, so the class prompt and every other word keep their meaning. As "
    "--train_text_encoder_ti of diffusers' advanced DreamBooth scripts, except that those insert new tokens: "
    "here the word's own rows train, so the exported text encoder and tokenizer stay CLIP's. Exports export/text_encoder.h5.")
flags.DEFINE_enum("export_dtype", "fp16", sorted(EXPORT_DTYPES), "dtype of export/model.safetensors (the single file).")
flags.DEFINE_integer(
    "lora_rank", None, "LoRA DreamBooth: train rank-R adapters on the UNet's attention projections (q, k, v, out) "
    "instead of the UNet, whose weights stay frozen; exports export/lora.safetensors (diffusers) and "
    "export/lora_kohya.safetensors (web UIs).")
flags.DEFINE_float("lora_alpha", None, "Adapters scale by lora_alpha / lora_rank; default: the rank (scale 1), as diffusers.")
flags.DEFINE_bool("lora_text_encoder", False, "With --lora_rank: adapters on the text encoder's attention projections too "
                  "(at --text_encoder_learning_rate).")
flags.DEFINE_bool("merge_lora", False, "With --lora_rank: also the full exports (export/unet.h5, diffusers/, model.safetensors) "
                  "with the adapters merged in.")
flags.DEFINE_enum("mixed_precision", "no", ["no", "bf16", "fp16"], "Compute dtype; fp16 uses dynamic loss scaling. TPU defaults to bf16.")
flags.DEFINE_integer("log_every", 10, "Log metrics every this many steps (and at the last step).")
flags.DEFINE_integer("checkpoint_every", 100, "Checkpoint every this many steps (a multiple of --steps_per_loop).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_integer("validation_every", 0, "Draw --validation_prompt images every this many steps (a multiple of --steps_per_loop; 0: never).")
flags.DEFINE_string("validation_prompt", "", "Prompt of the validation images.")
flags.DEFINE_enum(
    "engine", None, sorted(engine_select.BACKENDS),
    "Training engine: tf (tf.distribute) or jax (jax.sharding); default: Keras' backend (KERAS_BACKEND). "
    "Read before Keras is imported, so it sets KERAS_BACKEND.")
flags.DEFINE_bool("gradient_checkpointing", False, "JAX engine: recompute the UNet blocks' activations in the backward pass (less memory).")
flags.DEFINE_bool("jax_distributed", False, "JAX engine: start with jax.distributed.initialize() (one process per host: TPU pod slices find each other).")
flags.DEFINE_string("coordinator_address", "", "JAX engine, multi-node GPU: host:port of process 0 (implies --jax_distributed).")
flags.DEFINE_integer("num_processes", 0, "JAX engine, with --coordinator_address: how many processes take part.")
flags.DEFINE_integer("process_id", -1, "JAX engine, with --coordinator_address: this process's index (0 is the chief).")
flags.DEFINE_bool(
    "center_crop", True, "Crop the centre of each stored image; --nocenter_crop takes a random square instead "
    "(pixel records only: cached latents are of the centre crop).")


def _token_ids(words, manifest):
    """The token ids of --train_token_embeddings' words, in order, without repeats."""
    if not words:
        return ()
    from dbdist.formats.tokenizer_files import command_tokenizer

    tokenizer = command_tokenizer(FLAGS.vocab_path, FLAGS.weights)
    ids = []
    for word in words:
        pieces = tokenizer.encode(word)[1:-1]  # without the start and end tokens
        if not pieces:
            raise errors.UserError(f"--train_token_embeddings: {word!r} makes no tokens; expected words such as sks")
        ids += [i for i in pieces if i not in ids]
        # A word no instance prompt holds would train nothing (images may carry captions, so only warn).
        if not any(_holds(tokenizer.encode(c.instance_prompt), pieces) for c in manifest.concepts):
            logging.warning("--train_token_embeddings: %r is in no instance prompt of %s (%s); only captions "
                            "that hold it train it", word, FLAGS.data_dir,
                            "; ".join(repr(c.instance_prompt) for c in manifest.concepts))
    return tuple(ids)


def _holds(sequence, pieces):
    return any(sequence[i:i + len(pieces)] == pieces for i in range(len(sequence) - len(pieces) + 1))


def _run_config(model, manifest, engine):
    mixed_precision = FLAGS.mixed_precision
    if FLAGS.strategy == "tpu" and not FLAGS["mixed_precision"].present:
        mixed_precision = "bf16"  # TPUs compute in bf16 natively
    return RunConfig(
        model=model,
        data=DataConfig(data_dir=FLAGS.data_dir, random_flip=FLAGS.random_flip, center_crop=FLAGS.center_crop,
                        encoder_fingerprints=manifest.fingerprints),
        optim=OptimConfig(
            learning_rate=FLAGS.learning_rate,
            weight_decay=FLAGS.weight_decay,
            max_grad_norm=FLAGS.max_grad_norm,
            lr_schedule=FLAGS.lr_schedule,
            lr_warmup_steps=FLAGS.lr_warmup_steps,
            lr_power=FLAGS.lr_power,
            text_encoder_learning_rate=FLAGS.text_encoder_learning_rate,
        ),
        train=TrainConfig(
            output_dir=FLAGS.output_dir,
            max_train_steps=FLAGS.max_train_steps,
            global_batch_size=FLAGS.global_batch_size,
            prior_loss_weight=FLAGS.prior_loss_weight,
            noise_offset=FLAGS.noise_offset,
            snr_gamma=FLAGS.snr_gamma,
            seed=FLAGS.seed,
            log_every=FLAGS.log_every,
            steps_per_loop=FLAGS.steps_per_loop,
            grad_accum_steps=FLAGS.grad_accum_steps,
            train_text_encoder=FLAGS.train_text_encoder,
            train_token_embeddings=tuple(FLAGS.train_token_embeddings),
            # Resolved here with the run's tokenizer, so config.json records the rows trained.
            trained_token_ids=_token_ids(FLAGS.train_token_embeddings, manifest),
            export_dtype=FLAGS.export_dtype,
            checkpoint_every=FLAGS.checkpoint_every,
            keep_checkpoints=FLAGS.keep_checkpoints,
            validation_every=FLAGS.validation_every,
            validation_prompt=FLAGS.validation_prompt,
            gradient_checkpointing=FLAGS.gradient_checkpointing,
            lora_rank=FLAGS.lora_rank,
            # Resolved here, so config.json (and the resume check) records the scale trained with.
            lora_alpha=FLAGS.lora_alpha if FLAGS.lora_alpha is not None or FLAGS.lora_rank is None
            else float(FLAGS.lora_rank),
            lora_text_encoder=FLAGS.lora_text_encoder,
            merge_lora=FLAGS.merge_lora,
        ),
        runtime=RuntimeConfig(
            engine=engine,
            strategy=FLAGS.strategy,
            mixed_precision=mixed_precision,
            weights=FLAGS.weights,
            jit_compile=FLAGS.jit_compile,
        ),
    ).validate()


def _set_precision(mixed_precision):
    policy = {"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mixed_precision]
    keras.mixed_precision.set_dtype_policy(policy)


def _start_engine(config):
    """The engine of config.runtime.engine, its devices started (before any network is built)."""
    if config.runtime.engine == "jax":
        from dbdist.jax_engine.engine import JaxEngine  # imports JAX: only when it trains

        return JaxEngine(config, common_flags.NUM_CPU_DEVICES.value, FLAGS.jax_distributed,
                         FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from dbdist.training.engine import TfEngine

    return TfEngine(config, common_flags.NUM_CPU_DEVICES.value, common_flags.TPU.value)


def _build_networks(config, engine, need_vae_encoder=True):
    """The networks the run trains or uses, built where the engine wants its variables."""
    train = config.train
    # Cached latents make the VAE encoder unnecessary: it is not even built.
    networks = ("unet",) + (("vae_encoder",) if need_vae_encoder else ()) + (
        ("text_encoder",) if train.trains_text_encoder else ())
    with engine.scope():
        # Weights come from (1) the latest checkpoint, restored later over these, else
        # (2) --unet_weights / --weights / keras-cv's published files, else (3) tiny's
        # fixed random initialisation (not --seed: see weights/pretrained.py).
        models = load_networks(
            config.model,
            networks,
            weights_dir=config.runtime.weights,
            files={"unet": FLAGS.unet_weights} if FLAGS.unet_weights else None,
            gradient_checkpointing=config.train.gradient_checkpointing,
        )
        if need_vae_encoder:
            models.vae_encoder.trainable = False  # frozen: it only encodes the images
        if train.lora_rank:
            # After the weights load (their files hold no adapters): only the adapters train,
            # in either engine (each trains its networks' trainable variables).
            for network in (UNET, TEXT_ENCODER) if train.lora_text_encoder else (UNET,):
                add_adapters(getattr(models, network), network, config.model, train.lora_rank, train.lora_alpha,
                             seed=train.seed)
    return models


def _validation_sampler(config, engine):
    """A Sampler over the live UNet (and text encoder), with a frozen decoder and the tokenizer.

    Only the chief draws validation images, so the networks only it uses are built outside
    the strategy's scope, as plain local variables: in the scope of MultiWorkerMirroredStrategy
    creating a variable is a collective the other workers would have to join (building them
    there on every worker instead would hold a decoder and text encoder on each for nothing).
    """
    from dbdist.formats.tokenizer_files import command_tokenizer
    from dbdist.sampling import Sampler

    extra = load_networks(config.model, ("vae_decoder", "text_encoder"), config.runtime.weights)
    extra.unet, text_encoder = engine.trained_networks()
    if text_encoder is not None:
        extra.text_encoder = text_encoder
    tokenizer = command_tokenizer(FLAGS.vocab_path, config.runtime.weights)
    return Sampler(config.model, extra, tokenizer, compile=engine.compile_for_sampling)


def _prepare_output_dir(config, engine, chief):
    """On resume, checks the settings against the saved run and trims metrics past the checkpoint."""
    out = config.train.output_dir
    config_path = os.path.join(out, "config.json")
    checkpoints = os.path.join(out, "checkpoints")
    if tf.io.gfile.exists(config_path) and tf.io.gfile.exists(checkpoints) and tf.io.gfile.listdir(checkpoints):
        # The other engine's checkpoints are invisible to this one's: refuse before starting afresh beside them.
        check_same_engine(config_path, config.runtime.engine)
    resuming = engine.latest_checkpoint() is not None
    if resuming and tf.io.gfile.exists(config_path):
        check_resume_compatible(config_path, json.loads(config.to_json()))
    if chief:
        tf.io.gfile.makedirs(out)
        write_bytes_atomically(config_path, config.to_json().encode())
    return resuming


def _trim_metrics(output_dir, step):
    path = os.path.join(output_dir, "metrics.jsonl")
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    write_bytes_atomically(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def main(argv):
    del argv
    cloud_env.default_output_dir(FLAGS, os.environ)  # on Vertex AI: the folder of AIP_CHECKPOINT_DIR
    common_flags.require("data_dir", "output_dir")
    check_buckets(data_dir=FLAGS.data_dir, output_dir=FLAGS.output_dir, weights=FLAGS.weights,
                  unet_weights=FLAGS.unet_weights, vocab_path=FLAGS.vocab_path)
    # Stage 1: config, checked against the records before anything starts.
    manifest = read_manifest(FLAGS.data_dir)
    model = common_flags.selected_model_config(FLAGS.resolution or manifest.resolution)
    check_compatible(
        manifest, preset=model.preset, resolution=model.resolution, embedding_shape=model.embedding_shape,
        pad_token_id=model.text_encoder.pad_token_id, data_dir=FLAGS.data_dir,
    )
    config = _run_config(model, manifest, engine_select.engine_of_backend(keras.backend.backend(), FLAGS.engine))
    train = config.train
    _set_precision(config.runtime.mixed_precision)

    # Stage 2: the engine's devices: a tf.distribute strategy or a JAX mesh (built once; every
    # variable is made after it).
    engine = _start_engine(config)
    chief = engine.chief
    engine.check_global_batch(train.global_batch_size)
    # The stored embeddings (and cached latents) must come from this run's text encoder (and VAE):
    # generate encodes prompts and decodes latents with the run's weights. (Checked after the
    # strategy: building a network starts TensorFlow, after which logical devices are fixed.)
    check_same_encoders(
        manifest.fingerprints,
        load_fingerprints(model, manifest.fingerprints, config.runtime.weights),
        data_dir=FLAGS.data_dir, recorded_weights=manifest.weights, current_weights=config.runtime.weights,
    )

    # Stage 3: models and optimizers. Stage 4: restore (resume first, see _build_networks).
    engine.build_state(_build_networks(config, engine, need_vae_encoder=manifest.record_format != "latents"))
    start_step = engine.restore_latest() if _prepare_output_dir(config, engine, chief) else 0
    if chief:
        _trim_metrics(train.output_dir, start_step)
    logging.info(
        "%s training on %s records (%s): %d instance, %d class records in %d concept(s); step %d of %d",
        "prior-preservation" if manifest.num_class else "instance-only",
        manifest.record_format,
        "cached VAE latents, the VAE encoder is skipped" if manifest.record_format == "latents"
        else "pixels, encoded by the frozen VAE every step",
        manifest.num_instance, manifest.num_class, len(manifest.concepts), start_step, train.max_train_steps,
    )

    # Stage 5: data, from the restored step's position, each example with its own noise;
    # the pipeline counts micro-steps, so noise keys are step * accumulation + micro.
    iterator = engine.batches(
        FLAGS.data_dir, manifest, global_batch=train.global_batch_size, grad_accum_steps=train.grad_accum_steps,
        seed=train.seed, start_step=start_step,
        augmentation=Augmentation(random_flip=config.data.random_flip, center_crop=config.data.center_crop),
        noise=NoiseSpec(
            latent_shape=(config.model.latent_size, config.model.latent_size, config.model.vae.latent_channels),
            num_train_timesteps=config.model.schedule.num_train_timesteps,
            noise_offset=train.noise_offset,
        ),
    )
    settings = LossSettings(
        global_batch_size=train.global_batch_size * train.grad_accum_steps,
        prior_loss_weight=train.prior_loss_weight if manifest.num_class else 0.0,
        scaling_factor=config.model.vae.scaling_factor,
        time_embedding_dim=config.model.unet.time_embedding_dim,
        snr_gamma=train.snr_gamma,
    )

    # Stage 6: compile the step (TF: the inner loop of --steps_per_loop steps).
    engine.compile(settings, max_grad_norm=config.optim.max_grad_norm, grad_accum_steps=train.grad_accum_steps,
                   jit_compile=config.runtime.jit_compile)
    sampler = _validation_sampler(config, engine) if train.validation_every and chief else None

    # Stage 7: the loop.
    images_per_step = train.global_batch_size * train.grad_accum_steps * (2 if manifest.num_class else 1)
    log = MetricsLog(train.output_dir, train.max_train_steps, images_per_step) if chief else None
    summaries = Summaries(train.output_dir) if chief else None
    preemption = PreemptionWatcher()
    step, started = start_step, time.perf_counter()
    with engine.lost_workers_reported():
        while step < train.max_train_steps:
            count = _steps_in_next_loop(step, train)
            loop_start = time.perf_counter()
            history = engine.run(iterator, count)
            seconds_per_step = (time.perf_counter() - loop_start) / count
            for i in range(count):
                step += 1
                metrics = {k: float(v[i]) for k, v in history.items()}
                if not math.isfinite(metrics["loss"]) and config.runtime.mixed_precision != "fp16":
                    raise FloatingPointError(f"non-finite loss {metrics['loss']} at step {step}; stopping (nothing exported)")
                if chief and (step % train.log_every == 0 or step == train.max_train_steps):
                    summaries.scalars(log.log(step, metrics, seconds_per_step))
            if sampler and (step % train.validation_every == 0):
                engine.trained_networks()  # the JAX engine writes its weights into the sampler's models
                pictures = sampler.images(train.validation_prompt, num_images=2, seed=train.seed, num_steps=25)
                summaries.validation_images(step, train.validation_prompt, pictures)
            stop = engine.any_worker(preemption.requested)
            if step % train.checkpoint_every == 0 or step == train.max_train_steps or stop:
                engine.save(step)
            if stop:
                raise Preempted(step)
    logging.info("trained to step %d in %s", step, format_duration(time.perf_counter() - started))

    # Stage 8: export (chief only).
    if chief:
        unet, text_encoder = engine.trained_networks()
        export_dir = os.path.join(train.output_dir, "export")
        if train.lora_rank:
            adapted = {UNET: unet, **({TEXT_ENCODER: text_encoder} if text_encoder is not None else {})}
            export_lora(export_dir, config.model, adapted, merge=train.merge_lora)
            if train.merge_lora:  # the networks now hold the adapters in their kernels
                _export_other_formats(config, unet, text_encoder, export_dir)
        else:
            save_keras_cv_h5(unet, os.path.join(export_dir, "unet.h5"))
            if text_encoder is not None:
                save_keras_cv_h5(text_encoder, os.path.join(export_dir, "text_encoder.h5"))
            _export_other_formats(config, unet, text_encoder, export_dir)
        records = read_metrics(os.path.join(train.output_dir, "metrics.jsonl"))
        if records:
            plot_loss_curve(records, os.path.join(train.output_dir, "loss_curve.png"))
        logging.info("exported %s", export_dir)


def _export_other_formats(config, unet, text_encoder, export_dir):
    """export/diffusers/ and export/model.safetensors, beside the keras-cv files (dbdist/formats/export.py).
    Engine-free: any engine passes its trained Keras networks (text_encoder None when not trained)."""
    trained = {"unet": unet, **({"text_encoder": text_encoder} if text_encoder is not None else {})}
    export_formats(export_dir, config.model, trained, weights=config.runtime.weights, vocab_path=FLAGS.vocab_path,
                   export_dtype=config.train.export_dtype)


def _steps_in_next_loop(step, train):
    """Up to --steps_per_loop steps, ending at the next checkpoint or validation step: after a
    resume at a step that is not a multiple of --steps_per_loop, loops would step over them."""
    boundaries = [train.max_train_steps, _next_multiple(step, train.checkpoint_every)]
    if train.validation_every:
        boundaries.append(_next_multiple(step, train.validation_every))
    return min([train.steps_per_loop] + [b - step for b in boundaries])


def _next_multiple(step, every):
    return (step // every + 1) * every


if __name__ == "__main__":
    errors.run(main)
