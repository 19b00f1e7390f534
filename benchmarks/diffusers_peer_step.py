"""The peer: diffusers' DreamBooth training step in PyTorch, timed with dbdist's benchmark rows.

  python benchmarks/diffusers_peer_step.py --json=peer.json                 # GPU: sd-v1, 512 px
  python benchmarks/diffusers_peer_step.py --model=tiny --rows=2 --steps=2  # CPU smoke run

The step is examples/dreambooth/train_dreambooth.py's inner loop (diffusers 0.42.1; read at
huggingface/diffusers@58eb52c0), run with --with_prior_preservation --mixed_precision=bf16
--pre_compute_text_embeddings and its defaults otherwise, on random weights and random data:

* the UNet stays float32 (the script refuses a UNet that is not; these are the master weights) and
  accelerate's bf16 mixed precision runs its forward under torch.autocast(bfloat16);
* the VAE (only in the -vae row, where pixels come in) is frozen and cast to bf16 (weight_dtype):
  `vae.encode(pixel_values.to(weight_dtype)).latent_dist.sample() * scaling_factor`;
* noise = randn_like(latents), timesteps = randint(0, 1000, (bsz,)), DDPMScheduler.add_noise,
  epsilon target; the batch is instance then class examples, chunked in two for the MSE of each,
  loss = instance + prior_loss_weight (1.0) x prior, both in float32;
* loss.backward(), clip_grad_norm_(unet.parameters(), max_grad_norm=1.0), AdamW (lr 5e-6, betas
  0.9/0.999, weight decay 1e-2, eps 1e-8, torch's default implementation), step,
  zero_grad(set_to_none=False) (the script's default --set_grads_to_none is off);
* text embeddings are precomputed (float32, 77 x 768) as --pre_compute_text_embeddings gives them;
  without the -vae suffix a row feeds cached, already scaled latents (train_dreambooth.py has no
  latent cache; this is the same step with the VAE moved out, as dbdist's --cache_latents does);
* --gradient_checkpointing: unet.enable_gradient_checkpointing(), as the script does.

Eager PyTorch, attention through diffusers' default AttnProcessor2_0 (F.scaled_dot_product_attention).
Peak memory is torch.cuda.max_memory_allocated() per row (each row builds its own UNet and
optimizer); on a CPU it is "n/a". See benchmarks/step_rows.py for the rows, FLOPs and MFU.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

import step_rows

# SD 1.5's UNet, as runwayml/stable-diffusion-v1-5's unet/config.json gives it
# (https://huggingface.co/runwayml/stable-diffusion-v1-5/blob/main/unet/config.json); the keys left
# out are UNet2DConditionModel's defaults. Written here so that nothing is downloaded.
SD15_UNET_CONFIG = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
# Its VAE (vae/config.json of the same repository).
SD15_VAE_CONFIG = dict(
    act_fn="silu", block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
# Its noise schedule (scheduler/scheduler_config.json; train_dreambooth.py reads it into a DDPMScheduler).
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon")
# --model=tiny: dbdist's `tiny` preset in diffusers' terms (64 px), for a smoke run on a CPU.
TINY_UNET_CONFIG = dict(
    SD15_UNET_CONFIG, attention_head_dim=(2, 4, 4), block_out_channels=(32, 64, 64), cross_attention_dim=32,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
    norm_num_groups=8, sample_size=8, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_VAE_CONFIG = dict(SD15_VAE_CONFIG, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
                       sample_size=64)
MODELS = {"sd-v1": (SD15_UNET_CONFIG, SD15_VAE_CONFIG, 512), "tiny": (TINY_UNET_CONFIG, TINY_VAE_CONFIG, 64)}
TEXT_LENGTH = 77
WEIGHT_DTYPE = torch.bfloat16  # --mixed_precision=bf16


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="sd-v1")
    parser.add_argument("--resolution", type=int, default=0, help="image size in px (0: the model's)")
    parser.add_argument("--rows", default="2,8,32,2-vae,32-ckpt", help="UNet batches (instance + class) to time")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="the device's dense bf16 peak (0: known GPUs)")
    parser.add_argument("--time_budget_s", type=float, default=1e9, help="rows that would not fit are skipped")
    parser.add_argument("--json", default="", help="write the report here too")
    args = parser.parse_args(argv)
    try:
        args.rows = step_rows.parse_rows(args.rows)
    except ValueError as err:
        parser.error(str(err))
    args.resolution = args.resolution or MODELS[args.model][2]
    if args.resolution % 8:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}")
    return args


class PeerStep:
    """train_dreambooth.py's per-batch work for one row (see the module docstring)."""

    def __init__(self, unet_config, vae_config, row, device):
        self.device = device
        with torch.device(device):  # parameters made on the GPU: an 860M-parameter init on the CPU takes long
            self.unet = UNet2DConditionModel(**unet_config)  # float32 master weights
        self.unet.train()
        if row.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.vae = None
        if row.vae_in_step:
            with torch.device(device):
                self.vae = AutoencoderKL(**vae_config).to(dtype=WEIGHT_DTYPE)
            self.vae.requires_grad_(False)
        self.scheduler = DDPMScheduler(**SD15_SCHEDULE)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=5e-6, betas=(0.9, 0.999), weight_decay=1e-2,
                                           eps=1e-8)
        self.prior_loss_weight, self.max_grad_norm = 1.0, 1.0

    def __call__(self, batch):
        if self.vae is not None:
            model_input = self.vae.encode(batch["pixel_values"].to(dtype=WEIGHT_DTYPE)).latent_dist.sample()
            model_input = model_input * self.vae.config.scaling_factor
        else:
            model_input = batch["latents"]
        noise = torch.randn_like(model_input)
        bsz = model_input.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (bsz,), device=model_input.device)
        noisy_model_input = self.scheduler.add_noise(model_input, noise, timesteps.long())
        # accelerate's mixed_precision="bf16" wraps the model's forward in autocast.
        with torch.autocast(device_type=self.device.type, dtype=WEIGHT_DTYPE):
            model_pred = self.unet(noisy_model_input, timesteps, batch["input_ids"], return_dict=False)[0]
        model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss = loss + self.prior_loss_weight * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return loss.detach()


def make_batch(unet_config, row, resolution, device, generator):
    """Instance examples then class examples, as collate_fn concatenates them; random content."""
    latent = resolution // 8
    batch = {"input_ids": torch.randn(row.batch, TEXT_LENGTH, unet_config["cross_attention_dim"], generator=generator)}
    if row.vae_in_step:
        batch["pixel_values"] = torch.rand(row.batch, 3, resolution, resolution, generator=generator) * 2 - 1
    else:
        # Scaled latents (x 0.18215) have about unit variance: what the UNet sees from a cache.
        batch["latents"] = torch.randn(row.batch, 4, latent, latent, generator=generator)
    return {key: value.to(device) for key, value in batch.items()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_row(args, row, device):
    unet_config, vae_config, _ = MODELS[args.model]
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = PeerStep(unet_config, vae_config, row, device)
    batch = make_batch(unet_config, row, args.resolution, device, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    loss = step(batch)  # eager: the first step is the "compile" (cuDNN/cuBLAS autotuning, allocator growth)
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step(batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(batch)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return step_rows.result(row, resolution=args.resolution, step_seconds=seconds, compile_seconds=first,
                            peak_bytes=peak, peak_tflops_value=args.peak, timed_steps=args.steps, loss=float(loss))


def main(argv):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_kind = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    args.peak = step_rows.peak_tflops(device_kind, args.peak_tflops)
    budget = step_rows.Budget(args.time_budget_s)
    rows = []
    for row in args.rows:
        if not budget.fits_another():
            rows.append(step_rows.skipped(row, f"time budget ({args.time_budget_s:.0f} s) spent"))
            continue
        start = time.monotonic()
        try:
            rows.append(time_row(args, row, device))
        except torch.OutOfMemoryError as err:
            rows.append(step_rows.skipped(row, f"out of memory: {str(err).splitlines()[0][:200]}"))
        budget.record(time.monotonic() - start)
        print(json.dumps(rows[-1]), flush=True)
    report = {"engine": f"diffusers {__import__('diffusers').__version__} (PyTorch {torch.__version__}, eager)",
              "device": device_kind, "model": args.model, "resolution": args.resolution,
              "peak_tflops": args.peak or None, "warmup": args.warmup, "rows": rows}
    print(step_rows.markdown(report))
    if args.json:
        step_rows.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
