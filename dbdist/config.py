"""Every setting of dbdist, as frozen dataclasses with named presets.

Sections: model (UNet, VAE, text encoder, noise schedule), data, optim, train,
runtime. A preset fixes the model section (`tiny`, `toy`, `sd-v1`, `sd-v2`); absl
flags override the rest (see `dbdist/flags.py`). The final config is validated
here and written to the output directory as `config.json`.

Override order (lowest to highest): dataclass defaults -> model preset ->
command-line flags.
"""

import dataclasses
import json
from typing import Optional, Tuple

from dbdist.errors import UserError


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Shapes of the denoising UNet (keras-cv's `DiffusionModel` layout)."""

    # Output channels of each resolution level, highest resolution first.
    block_channels: tuple = (320, 640, 1280, 1280)
    # Whether each level has a spatial transformer after each ResBlock.
    block_attention: tuple = (True, True, True, False)
    # Attention heads at each level (head size = channels // heads).
    attention_heads: tuple = (8, 8, 8, 8)
    # ResBlocks per level on the way down (the way up has one more).
    layers_per_block: int = 2
    # Width of the text embedding the cross-attention reads.
    context_dim: int = 768
    # SD 2.x projects in and out of the transformer with Dense, SD 1.x with 1x1 conv.
    linear_projection: bool = False
    # Groups of every GroupNormalization.
    norm_groups: int = 32
    latent_channels: int = 4
    # keras-cv's maths (the presets): GEGLU with GELU's tanh form ("gelu") and 1e-5 in the transformers'
    # GroupNorm. SD's own code and diffusers use the exact GELU ("gelu_erf") and 1e-6; weights imported
    # from their files are run so (dbdist.formats.unet_keys.faithful_config).
    geglu_activation: str = "gelu"
    transformer_norm_epsilon: float = 1e-5

    @property
    def time_embedding_dim(self):
        """Width of the sinusoidal timestep embedding (320 for SD)."""
        return self.block_channels[0]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Shapes of the KL autoencoder (keras-cv's `ImageEncoder`/`Decoder`)."""

    block_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    # Latents are multiplied by this before the UNet sees them (SD's 0.18215).
    scaling_factor: float = 0.18215
    # Of every GroupNormalization: keras-cv's 1e-5 (the presets); SD's own and diffusers' AutoencoderKL
    # use 1e-6 (dbdist.formats.vae_keys.faithful_config, for weights imported from their files).
    norm_epsilon: float = 1e-5

    @property
    def downsample_factor(self):
        return 2 ** (len(self.block_channels) - 1)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """Shapes of the CLIP text tower (keras-cv's `TextEncoder`/`TextEncoderV2`)."""

    vocab_size: int = 49408
    max_length: int = 77
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    # "quick_gelu" for OpenAI CLIP (SD 1.x), "gelu" (tanh form, as keras-cv) for OpenCLIP;
    # "gelu_erf" is OpenCLIP's own exact GELU, as transformers runs SD 2.x's text encoder.
    activation: str = "quick_gelu"
    # The id prompts are padded with to max_length, as the model's own tokenizer pads: OpenAI
    # CLIP's (SD 1.x) with its end token 49407, OpenCLIP's (SD 2.x) with 0 (open_clip's
    # tokenize() fills zeros; diffusers' SD 2 tokenizer pads with "!", id 0). The padded
    # positions' embeddings reach the UNet's cross-attention, so the id matters.
    pad_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The DDPM noise schedule Stable Diffusion was trained with."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # What the UNet predicts: "epsilon" (noise) or "v_prediction" (v = sqrt(ab) noise - sqrt(1-ab) x_0);
    # both the training target and DDIM sampling follow it. keras-cv's SD 1.x and 2.1 files predict noise.
    prediction_type: str = "epsilon"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model preset: the four networks and the resolution they train at."""

    preset: str
    resolution: int
    unet: UNetConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    schedule: ScheduleConfig = ScheduleConfig()
    # Whether `--weights` can be omitted: published keras-cv files exist.
    has_published_weights: bool = True

    @property
    def latent_size(self):
        return self.resolution // self.vae.downsample_factor

    @property
    def embedding_shape(self):
        return (self.text_encoder.max_length, self.text_encoder.width)


def _tiny():
    """64 px, a few small blocks: builds and trains in seconds on a CPU."""
    return ModelConfig(
        preset="tiny",
        resolution=64,
        unet=UNetConfig(
            block_channels=(32, 64, 64),
            block_attention=(True, True, False),
            attention_heads=(2, 4, 4),
            layers_per_block=1,
            context_dim=32,
            norm_groups=8,
        ),
        vae=VAEConfig(block_channels=(16, 32, 32, 32), layers_per_block=1, norm_groups=8),
        text_encoder=TextEncoderConfig(width=32, num_layers=2, num_heads=2),
        has_published_weights=False,
    )


def _toy():
    """64 px, trained on the toy world (dbdist/toy/): draws balls and boxes on a CPU in seconds.

    The VAE downsamples 4x (16x16 latents keep the world's 4 px stripes); the text
    encoder reads CLIP's BPE ids through a 64-wide table over the whole CLIP vocabulary
    (12.6 MB, most of the shipped weights), so any prompt tokenizes as for SD.
    Its weights load from dbdist/toy/weights/, package data (made by `python -m dbdist.toy.pretrain --install`).
    """
    return ModelConfig(
        preset="toy",
        resolution=64,
        unet=UNetConfig(
            block_channels=(32, 64, 64),
            block_attention=(True, True, True),
            attention_heads=(2, 4, 4),
            layers_per_block=1,
            context_dim=64,
            norm_groups=8,
        ),
        vae=VAEConfig(block_channels=(16, 32, 64), layers_per_block=1, norm_groups=8, scaling_factor=TOY_SCALING_FACTOR),
        text_encoder=TextEncoderConfig(width=64, num_layers=2, num_heads=2),
    )


# The toy VAE's latents need no scaling: `python -m dbdist.toy.pretrain` rescales the trained VAE
# exactly (dbdist/toy/vae_training.py normalise_latents) so that its latent means have std 1 / this.
TOY_SCALING_FACTOR = 1.0


def _sd_v1():
    """Stable Diffusion 1.4/1.5 shapes (keras-cv `StableDiffusion`)."""
    return ModelConfig(
        preset="sd-v1",
        resolution=512,
        unet=UNetConfig(),
        vae=VAEConfig(),
        text_encoder=TextEncoderConfig(),
    )


def _sd_v2():
    """Stable Diffusion 2.1-base (512 px, epsilon) shapes and settings (keras-cv `StableDiffusionV2`).

    Which SD 2.1 keras-cv's file is: keras-cv 0.9.0 (keras_cv/src/models/stable_diffusion/
    stable_diffusion.py) builds `StableDiffusionV2(img_height=512, img_width=512)` by default and
    in its examples, and samples it only with an epsilon DDIM step (pred_x0 = (x_t - sqrt(1 - a_t)
    eps) / sqrt(a_t)); the file (huggingface.co/ianstenbit/keras-sd2.1, added by keras-cv PR #1130,
    2022-12, "sdv2.1 weights", its source checkpoint not named) has no v-prediction path. SD 2.1's
    768 px model (v2-1_768-ema-pruned) predicts v and gives noise under an epsilon sampler; the
    2.1-base model (v2-1_512-ema-pruned, fine-tuned from 512-base-ema) predicts noise at 512 px,
    which is what keras-cv samples. So: 512 px, epsilon. A v-prediction 768 model comes in with
    its own settings (ScheduleConfig.prediction_type) from its source.
    """
    return ModelConfig(
        preset="sd-v2",
        resolution=512,
        unet=UNetConfig(
            attention_heads=(5, 10, 20, 20),  # head size 64 everywhere
            context_dim=1024,
            linear_projection=True,
        ),
        vae=VAEConfig(),
        text_encoder=TextEncoderConfig(width=1024, num_layers=23, num_heads=16, activation="gelu", pad_token_id=0),
    )


MODEL_PRESETS = {"tiny": _tiny, "toy": _toy, "sd-v1": _sd_v1, "sd-v2": _sd_v2}
# Before pad ids were per preset, every preset padded prompts with the end token (as keras-cv
# does): a config.json or manifest.json without `pad_token_id` was made with this one.
LEGACY_PAD_TOKEN_ID = 49407


def model_config(preset):
    """The ModelConfig of a named preset."""
    if preset not in MODEL_PRESETS:
        raise UserError(f"Unknown model preset {preset!r}; expected one of {sorted(MODEL_PRESETS)}.")
    return MODEL_PRESETS[preset]()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records are and how batches are drawn from them."""

    data_dir: str = ""
    # Augmentation at training time, keyed by (seed, step, example) (dbdist/data/augment.py).
    random_flip: bool = False
    center_crop: bool = True  # False: random square crops of pixel records
    # {network: fingerprint} of the text encoder (and VAE encoder) that made the records
    # (dbdist/weights/fingerprint.py), so generate can refuse other ones.
    encoder_fingerprints: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW as in the DreamBooth recipe; clipping is by global norm."""

    learning_rate: float = 5e-6
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 1e-2
    epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # constant | constant_with_warmup | linear | cosine | polynomial (decay to 0, polynomial to 1e-7, at the last step)
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    # Exponent of the polynomial decay (1.0: linear down to 1e-7, as diffusers' default).
    lr_power: float = 1.0
    # Only with train_text_encoder: the text encoder's own AdamW learning rate.
    text_encoder_learning_rate: float = 5e-6


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What one training run does."""

    output_dir: str = ""
    max_train_steps: int = 400
    # Instance examples per step, over all replicas; each is paired with one class example.
    global_batch_size: int = 1
    prior_loss_weight: float = 1.0
    # Offset noise: + noise_offset x N(0, 1) per example and latent channel (0: none).
    noise_offset: float = 0.0
    # min-SNR-gamma weighting of the instance loss (None: plain MSE); diffusers recommends 5.0.
    snr_gamma: Optional[float] = None
    seed: int = 0
    log_every: int = 1
    # Steps run inside one tf.function call (fewer host round trips).
    steps_per_loop: int = 1
    # Micro-batches whose gradients are summed before one optimizer step.
    grad_accum_steps: int = 1
    train_text_encoder: bool = False
    # Pivotal tuning (textual inversion beside DreamBooth): only these words' rows of the text
    # encoder's token embedding train, at text_encoder_learning_rate; the rest of the text encoder
    # stays as it is. For an identifier the base model never learned. train.py resolves the words
    # to `trained_token_ids` with the run's tokenizer (both are recorded in config.json).
    train_token_embeddings: Tuple[str, ...] = ()
    trained_token_ids: Tuple[int, ...] = ()
    # dtype of export/model.safetensors: fp16 | bf16 | fp32 (export/diffusers/ is fp32).
    export_dtype: str = "fp16"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    validation_every: int = 0
    validation_prompt: str = ""
    # LoRA DreamBooth (dbdist/lora/): adapters of this rank on the UNet's attention projections
    # train instead of the UNet, whose weights stay frozen. None: full fine-tuning.
    lora_rank: Optional[int] = None
    # The adapters' output is scaled by lora_alpha / lora_rank (PEFT's); the flag's default is
    # the rank (scale 1), as diffusers' train_dreambooth_lora.py.
    lora_alpha: Optional[float] = None
    # Adapters on the text encoder's attention projections too (trained at text_encoder_learning_rate).
    lora_text_encoder: bool = False
    # Also write export/unet.h5 (and text_encoder.h5) with the adapters folded in.
    merge_lora: bool = False
    # Recompute the UNet blocks' activations in the backward pass instead of keeping them (JAX engine).
    gradient_checkpointing: bool = False

    @property
    def trains_text_encoder(self):
        """The text encoder is trained: all of it, its LoRA adapters, or some of its token embeddings."""
        return self.train_text_encoder or self.lora_text_encoder or bool(self.train_token_embeddings)


# --strategy values of each engine (dbdist/training/strategy.py, dbdist/jax_engine/mesh.py).
TF_STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("one_device", "data_parallel")
ENGINE_STRATEGIES = {"tf": TF_STRATEGIES, "jax": JAX_STRATEGIES}
ENGINE_NAMES = {"tf": "TF engine", "jax": "JAX engine"}
ENGINE_BACKENDS = {"tf": "tensorflow", "jax": "jax"}  # the Keras backend (KERAS_BACKEND) of each engine


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the run is placed on hardware."""

    # Which engine trains: "tf" (dbdist/training/) or "jax" (dbdist/jax_engine/), from Keras' backend.
    engine: str = "tf"
    strategy: str = "one_device"
    mixed_precision: str = "no"
    # keras-cv .h5 directory, diffusers folder or single .safetensors (local or gs://); "" = published files.
    weights: str = ""
    # Initial dynamic loss scale for fp16.
    initial_loss_scale: float = 2.0**15
    # XLA-compile each replica's forward/backward pass.
    jit_compile: bool = False


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    runtime: RuntimeConfig

    def validate(self):
        """Raises ValueError naming the first bad value."""
        m, t, r = self.model, self.train, self.runtime
        if m.resolution % 8 or m.resolution % m.vae.downsample_factor:
            raise UserError(f"resolution must be a multiple of {max(8, m.vae.downsample_factor)}, got {m.resolution}")
        unet_factor = 2 ** (len(m.unet.block_channels) - 1)
        if m.latent_size % unet_factor:
            raise UserError(
                f"resolution {m.resolution} gives {m.latent_size}x{m.latent_size} latents, "
                f"which the UNet's {len(m.unet.block_channels)} levels cannot halve {unet_factor}x; "
                f"use a multiple of {unet_factor * m.vae.downsample_factor}"
            )
        if t.max_train_steps < 0:
            raise UserError(f"max_train_steps must be >= 0, got {t.max_train_steps}")
        if t.global_batch_size < 1:
            raise UserError(f"global_batch_size must be >= 1, got {t.global_batch_size}")
        if t.prior_loss_weight < 0:
            raise UserError(f"prior_loss_weight must be >= 0, got {t.prior_loss_weight}")
        if not 0 <= t.noise_offset < float("inf"):
            raise UserError(f"noise_offset must be a finite number >= 0, got {t.noise_offset}")
        if t.snr_gamma is not None and not 0 < t.snr_gamma < float("inf"):
            raise UserError(f"snr_gamma must be a finite number > 0 when given, got {t.snr_gamma}")
        if self.optim.learning_rate < 0:
            raise UserError(f"learning_rate must be >= 0, got {self.optim.learning_rate}")
        for name in ("steps_per_loop", "grad_accum_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(t, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(t, name)}")
        if t.checkpoint_every % t.steps_per_loop:
            raise UserError(
                f"checkpoint_every ({t.checkpoint_every}) must be a multiple of steps_per_loop ({t.steps_per_loop}): "
                "checkpoints are taken between loops"
            )
        if t.validation_every < 0:
            raise ValueError(f"validation_every must be >= 0 (0: never), got {t.validation_every}")
        if t.validation_every % t.steps_per_loop:
            raise ValueError(
                f"validation_every ({t.validation_every}) must be a multiple of steps_per_loop ({t.steps_per_loop}): "
                "validation images are drawn between loops"
            )
        if t.validation_every and not t.validation_prompt:
            raise UserError("validation_every needs a validation_prompt")
        self._validate_lora()
        self._validate_token_embeddings()
        if r.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"mixed_precision must be no, bf16 or fp16, got {r.mixed_precision!r}")
        self._validate_engine()
        return self

    def _validate_engine(self):
        r = self.runtime
        if r.engine not in ENGINE_STRATEGIES:
            raise UserError(f"engine must be one of {sorted(ENGINE_STRATEGIES)}, got {r.engine!r}")
        name, takes = ENGINE_NAMES[r.engine], ENGINE_STRATEGIES[r.engine]
        if r.strategy not in takes:
            owners = [ENGINE_NAMES[e] for e, strategies in ENGINE_STRATEGIES.items() if r.strategy in strategies]
            what = f" is a {owners[0]} strategy;" if owners else ":"
            raise UserError(f"--strategy={r.strategy}{what} the {name} takes {', '.join(takes)}")
        if r.engine == "jax" and r.mixed_precision == "fp16":
            raise UserError("--mixed_precision=fp16 is not supported by the JAX engine (no loss scaling there); "
                            "use bf16 (fp32 master weights) or no")
        if r.engine == "tf" and self.train.gradient_checkpointing:
            raise UserError("--gradient_checkpointing is supported by the JAX engine only (KERAS_BACKEND=jax or --engine=jax)")

    def _validate_token_embeddings(self):
        t = self.train
        if not t.train_token_embeddings:
            return
        for other in ("train_text_encoder", "lora_text_encoder"):
            if getattr(t, other):
                raise UserError(f"train_token_embeddings ({','.join(t.train_token_embeddings)}) trains only those rows of "
                                f"the text encoder's token embedding; {other} trains more of it: choose one")
        if t.lora_rank is not None:
            raise UserError(f"train_token_embeddings ({','.join(t.train_token_embeddings)}) with lora_rank: LoRA's files "
                            "hold adapters, not token embeddings, so the trained rows would not be exported; use "
                            "one of them")
        if not t.trained_token_ids:
            raise UserError(f"train_token_embeddings {t.train_token_embeddings}: no token ids were resolved")
        vocab = self.model.text_encoder.vocab_size
        bad = [i for i in t.trained_token_ids if not 0 <= i < vocab]
        if bad:
            raise UserError(f"trained_token_ids {bad} are outside the text encoder's vocabulary of {vocab}")

    def _validate_lora(self):
        t = self.train
        if t.lora_rank is None:
            for name in ("lora_text_encoder", "merge_lora"):
                if getattr(t, name):
                    raise UserError(f"{name} needs lora_rank (LoRA training), which is not set")
            if t.lora_alpha is not None:
                raise UserError(f"lora_alpha ({t.lora_alpha}) needs lora_rank (LoRA training), which is not set")
            return
        if t.lora_rank < 1:
            raise UserError(f"lora_rank must be >= 1, got {t.lora_rank}")
        if t.lora_alpha is not None and not t.lora_alpha > 0:
            raise UserError(f"lora_alpha must be > 0, got {t.lora_alpha}")
        if t.train_text_encoder:
            raise UserError(
                "train_text_encoder fine-tunes all of the text encoder; with lora_rank use lora_text_encoder "
                "(adapters on its attention projections) instead")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def with_resolution(config: ModelConfig, resolution: Optional[int]):
    """The preset at another training resolution (None keeps the preset's)."""
    if not resolution:
        return config
    if resolution <= 0 or resolution % 8:
        raise UserError(f"resolution must be a positive multiple of 8, got {resolution}")
    return dataclasses.replace(config, resolution=resolution)
