"""absl flags shared by the dbdist commands (importing this module defines them)."""

import dataclasses

from absl import flags

from dbdist.config import JAX_STRATEGIES, MODEL_PRESETS, TF_STRATEGIES, model_config, with_resolution
from dbdist.flag_checks import require  # noqa: F401 (the commands call common_flags.require)

MODEL = flags.DEFINE_enum("model", "tiny", sorted(MODEL_PRESETS), "Model preset: tiny (64 px, random weights, CPU), toy (64 px, trained on the toy world, shipped), sd-v1 (SD 1.4/1.5), sd-v2 (SD 2.1-base, 512 px).")
WEIGHTS = flags.DEFINE_string(
    "weights",
    "",
    "Weights (local or gs://): a directory with keras-cv layout .h5 files (unet.h5 / kcv_diffusion_model.h5, "
    "text_encoder.h5 / kcv_encoder.h5, vae_encoder.h5, vae_decoder.h5 / kcv_decoder.h5), a diffusers folder "
    "(model_index.json, unet/, vae/, text_encoder/), or a single-file .safetensors checkpoint (SD 1.x/2.x). "
    "Empty: keras-cv's published files for sd-v1/sd-v2 (downloaded once, hash-checked); fixed random weights for tiny.",
)
RESOLUTION = flags.DEFINE_integer("resolution", None, "Training image size in pixels (multiple of 8); default: the "
                                  "diffusers or single-file --weights' own (see --prediction_type), else the preset's.")
PREDICTION_TYPE = flags.DEFINE_enum(
    "prediction_type", None, ["epsilon", "v_prediction"], "What the UNet predicts; default: what a diffusers "
    "folder's scheduler/scheduler_config.json says, or for a single .safetensors what diffusers infers (SD 2.x: "
    "v_prediction at 768 px), else the preset's (epsilon).")
SEED = flags.DEFINE_integer("seed", 0, "Random seed: data order, training noise, sampling noise (not tiny's weights, which are fixed).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Records made by `python -m dbdist.make_tfrecords` (local or gs://).")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where this command writes its results (local or gs://).")
VOCAB_PATH = flags.DEFINE_string(
    "vocab_path", "", "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, local or gs://); empty: a diffusers --weights "
    "folder's tokenizer/, else keras-cv's copy (downloaded)."
)
UNET_WEIGHTS = flags.DEFINE_string(
    "unet_weights", "", "A UNet: a keras-cv layout .h5 (e.g. a DreamBooth export/unet.h5), a .safetensors (single-file "
    "or diffusers keys) or a diffusers unet/ folder; overrides --weights for the UNet."
)

# Strategy flags: train replicates the train step, make_tfrecords the class-image sampler.
STRATEGY = flags.DEFINE_enum(
    "strategy", "one_device", list(dict.fromkeys(TF_STRATEGIES + JAX_STRATEGIES)),
    "TF engine: a tf.distribute strategy (one_device, mirrored, multi_worker, tpu); JAX engine (train only): "
    "one_device or data_parallel (every device of every process).")
NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices (mirrored on a laptop).")
TPU = flags.DEFINE_string("tpu", "local", "With --strategy=tpu: 'local' on a TPU VM, a TPU name, or grpc://host:8470.")
RANDOM_FLIP = flags.DEFINE_bool(
    "random_flip", False, "Mirror half the training examples at random (train), and with --cache_latents "
    "also cache the mirrored image's latents (make_tfrecords).")


def selected_model_config(resolution=None):
    """The --model preset at --resolution (or the `resolution` given, e.g. from a manifest), with the
    prediction type and resolution a diffusers or single-file --weights states (flags win)."""
    from dbdist.formats.source_settings import read_source_settings

    config = model_config(MODEL.value)
    source = read_source_settings(WEIGHTS.value, config.vae.downsample_factor)
    prediction_type = PREDICTION_TYPE.value or source.prediction_type or config.schedule.prediction_type
    config = dataclasses.replace(
        config, schedule=dataclasses.replace(config.schedule, prediction_type=prediction_type))
    return with_resolution(config, resolution or RESOLUTION.value or source.resolution)
