"""absl flags shared by the dbdist commands (importing this module defines them)."""

from absl import flags

from dbdist.config import JAX_STRATEGIES, MODEL_PRESETS, TF_STRATEGIES, model_config, with_resolution
from dbdist.flag_checks import require  # noqa: F401 (the commands call common_flags.require)

MODEL = flags.DEFINE_enum("model", "tiny", sorted(MODEL_PRESETS), "Model preset: tiny (64 px, random weights, CPU), sd-v1 (SD 1.4/1.5), sd-v2 (SD 2.1-base, 512 px).")
WEIGHTS = flags.DEFINE_string(
    "weights",
    "",
    "Directory (local or gs://) with keras-cv layout .h5 files (unet.h5 / kcv_diffusion_model.h5, "
    "text_encoder.h5 / kcv_encoder.h5, vae_encoder.h5, vae_decoder.h5 / kcv_decoder.h5). Empty: keras-cv's "
    "published files for sd-v1/sd-v2 (downloaded once, hash-checked); fixed random weights for tiny.",
)
RESOLUTION = flags.DEFINE_integer("resolution", None, "Training image size in pixels (multiple of 8); default: the preset's.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed: data order, training noise, sampling noise (not tiny's weights, which are fixed).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Records made by `python -m dbdist.make_tfrecords` (local or gs://).")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where this command writes its results (local or gs://).")
VOCAB_PATH = flags.DEFINE_string(
    "vocab_path", "", "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, local or gs://); empty downloads keras-cv's copy."
)
UNET_WEIGHTS = flags.DEFINE_string(
    "unet_weights", "", "A UNet .h5 in keras-cv layout (e.g. a DreamBooth export/unet.h5); overrides --weights for the UNet."
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
    """The --model preset at --resolution (or the `resolution` given, e.g. from a manifest)."""
    return with_resolution(model_config(MODEL.value), resolution or RESOLUTION.value)
