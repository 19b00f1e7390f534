"""Times dbdist's JAX engine train step (dbdist/jax_engine/step.py, the engine's own jitted step).

  python benchmarks/jax_dreambooth_step.py --json=jax.json                       # GPU: sd-v1, 512 px
  python benchmarks/jax_dreambooth_step.py --model=tiny --rows=2 --steps=2 --warmup=1   # CPU smoke run

What runs is what `KERAS_BACKEND=jax python -m dbdist.train` runs per step: build_models with
random weights under the mixed_bfloat16 policy (bf16 compute, float32 master weights), AdamW with
global-norm clipping (jax_engine/optimizer.py), init_state / frozen_weights / make_train_step on
a data-parallel mesh, and train_step(state, frozen, batch) with the state donated. The batch is
the reader's layout (dbdist/data/batch_keys.py) with prior preservation: each UNet batch of B
images is B/2 instance and B/2 class examples, random cached latents (posterior mean and
log-variance) and random 77-token text embeddings, or random pixels in [-1, 1] for a `-vae` row
(the frozen VAE encoder then runs inside the step). The batch and its per-example noise and
timesteps are put on the devices once and reused, as the peer (benchmarks/diffusers_peer_step.py)
reuses its batch, so the input pipeline is not timed.

Each row runs in a fresh process: JAX's peak_bytes_in_use cannot be reset, and a row must not see
the last one's buffers. Per row: the lowering and compilation (once), --warmup steps, then
--steps timed steps ended by block_until_ready. img/s counts UNet images (instance + class);
MFU and the rows are benchmarks/step_rows.py's. Imports no TensorFlow (the GPU machine has none).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import step_rows

MODELS = ("tiny", "sd-v1", "sd-v2")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="sd-v1")
    parser.add_argument("--resolution", type=int, default=0, help="image size in px (0: the preset's)")
    parser.add_argument("--rows", default="2,8,32,2-vae,32-ckpt", help="UNet batches (instance + class) to time; "
                        "-vae: pixels in, VAE encoder in the step; -ckpt: --gradient_checkpointing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--strategy", choices=("one_device", "data_parallel"), default="one_device")
    parser.add_argument("--mixed_precision", choices=("bf16", "no"), default="bf16")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="the device's dense bf16 peak (0: known GPUs)")
    parser.add_argument("--time_budget_s", type=float, default=1e9, help="rows that would not fit are skipped")
    parser.add_argument("--json", default="", help="write the report here too")
    parser.add_argument("--block_tensorflow", action="store_true",
                        help="make `import tensorflow` fail in the timed processes, as on a machine without it: the "
                        "step must not need it (Keras' set_random_seed also seeds TensorFlow when it can import it)")
    parser.add_argument("--one_row", default="", help=argparse.SUPPRESS)  # internal: run this row, print its JSON
    args = parser.parse_args(argv)
    try:
        args.row_list = step_rows.parse_rows(args.one_row or args.rows)
    except ValueError as err:
        parser.error(str(err))
    if args.resolution and args.resolution % 64:
        parser.error(f"--resolution must be a multiple of 64 (the UNet halves the latents three times), "
                     f"got {args.resolution}")
    return args


# --- one row, in its own process -------------------------------------------------------------------

def _synthetic_batch(config, row, rng):
    """{batch key: (1 micro-batch, B/2 examples, ...)} for the instance and the class stream."""
    import numpy as np

    from dbdist.data import batch_keys as keys

    half, size, latent = row.batch // 2, config.resolution, config.latent_size
    length, width = config.embedding_shape  # 77 tokens x the text encoder's width
    channels = config.vae.latent_channels
    batch = {keys.EXAMPLE_POSITION: np.arange(half, dtype=np.int32)[None]}
    for stream in ("INSTANCE", "CLASS"):
        def key(field):
            return getattr(keys, f"{stream}_{field}")  # the reader's names (dbdist/data/batch_keys.py)

        if row.vae_in_step:
            batch[key("PIXELS")] = rng.uniform(-1, 1, (1, half, size, size, 3)).astype(np.float32)
        else:
            batch[key("LATENT_MEAN")] = rng.normal(size=(1, half, latent, latent, channels)).astype(np.float32)
            batch[key("LATENT_LOGVAR")] = np.full((1, half, latent, latent, channels), -6.0, np.float32)
        batch[key("EMBEDDING")] = rng.normal(size=(1, half, length, width)).astype(np.float32)
        batch[key("VAE_NOISE")] = rng.normal(size=(1, half, latent, latent, channels)).astype(np.float32)
        batch[key("NOISE")] = rng.normal(size=(1, half, latent, latent, channels)).astype(np.float32)
        batch[key("TIMESTEP")] = rng.integers(0, 1000, (1, half)).astype(np.int32)
    return batch


def _peak_bytes(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("peak_bytes_in_use")


def run_one_row(args):
    """Builds the engine's state and step for one row, times it, returns the row's result."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if args.block_tensorflow:
        sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
    import jax
    import keras
    import numpy as np

    from dbdist.config import OptimConfig, model_config, with_resolution
    from dbdist.diffusion import NoiseSchedule
    from dbdist.diffusion.dreambooth_loss import LossSettings
    from dbdist.jax_engine import mesh as jax_mesh
    from dbdist.jax_engine import optimizer as jax_optimizer
    from dbdist.jax_engine import step as jax_step
    from dbdist.models import build_models

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"KERAS_BACKEND must be jax, got {keras.backend.backend()}")
    (row,) = args.row_list
    config = model_config(args.model)
    if args.resolution:
        config = with_resolution(config, args.resolution)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if args.mixed_precision == "bf16" else "float32")
    networks_wanted = ("unet", "vae_encoder") if row.vae_in_step else ("unet",)
    models = build_models(config, networks_wanted, gradient_checkpointing=row.gradient_checkpointing)
    networks = jax_step.Networks(unet=models.unet, vae_encoder=models.vae_encoder if row.vae_in_step else None)
    mesh = jax_mesh.make_mesh(args.strategy)
    instances = row.batch // 2
    jax_mesh.check_batch_divides(instances, mesh)
    optimizer = jax_optimizer.build_optimizer(OptimConfig(), networks.groups(), total_steps=1000)
    state = jax_step.init_state(networks, optimizer, mesh)
    frozen = jax_step.frozen_weights(networks, mesh)
    settings = LossSettings(global_batch_size=instances, prior_loss_weight=1.0,
                            scaling_factor=config.vae.scaling_factor, time_embedding_dim=config.unet.time_embedding_dim)
    train_step = jax_step.make_train_step(networks, optimizer, NoiseSchedule(config.schedule), settings, mesh)
    batch = jax_mesh.global_batch(_synthetic_batch(config, row, np.random.default_rng(0)), mesh)

    start = time.perf_counter()
    compiled = train_step.lower(state, frozen, batch).compile()  # the engine's jitted step, compiled once
    compile_seconds = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics) if args.warmup else state)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / args.steps
    loss = float(np.asarray(metrics["loss"].addressable_data(0)))
    if not np.isfinite(loss):
        raise RuntimeError(f"the step's loss is {loss}: not a step worth timing")
    device = mesh.devices.flat[0]
    peak = _peak_bytes(device)
    peak_tflops = step_rows.peak_tflops(device.device_kind, args.peak_tflops) * mesh.devices.size
    result = step_rows.result(row, resolution=config.resolution, step_seconds=seconds, compile_seconds=compile_seconds,
                              peak_bytes=peak, peak_tflops_value=peak_tflops, timed_steps=args.steps, loss=loss)
    result.update(device=f"{mesh.devices.size} x {device.device_kind}", resolution=config.resolution,
                  peak_tflops=peak_tflops or None, jax=jax.__version__, keras=keras.__version__,
                  # Whether TensorFlow was loaded (with --block_tensorflow it cannot be: the step needs none).
                  tensorflow_loaded=sys.modules.get("tensorflow") is not None)
    return result


# --- the driver: one process per row ----------------------------------------------------------------

_ROW_MARK = "JAX_STEP_ROW "


def _row_command(args, row):
    forwarded = [f"--model={args.model}", f"--resolution={args.resolution}", f"--warmup={args.warmup}",
                 f"--steps={args.steps}", f"--strategy={args.strategy}", f"--mixed_precision={args.mixed_precision}",
                 f"--peak_tflops={args.peak_tflops}", f"--one_row={row.name.removeprefix('b')}",
                 *(["--block_tensorflow"] if args.block_tensorflow else [])]
    return [sys.executable, os.path.abspath(__file__), *forwarded]


def run_rows(args):
    budget = step_rows.Budget(args.time_budget_s)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    rows, first = [], {}
    for row in args.row_list:
        if not budget.fits_another():
            rows.append(step_rows.skipped(row, f"time budget ({args.time_budget_s:.0f} s) spent"))
            print(json.dumps(rows[-1]), flush=True)
            continue
        start = time.monotonic()
        with tempfile.TemporaryFile("w+") as log:
            try:
                done = subprocess.run(_row_command(args, row), env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                      timeout=min(max(1.0, budget.left()), 86400.0))
                output, code = done.stdout, done.returncode
            except subprocess.TimeoutExpired as err:
                output, code = err.stdout or "", "timeout"
            log.seek(0)
            errors = log.read()
        found = [line[len(_ROW_MARK):] for line in output.splitlines() if line.startswith(_ROW_MARK)]
        if code == 0 and found:
            rows.append(json.loads(found[-1]))
            first = first or rows[-1]
        else:
            last = (errors.strip().splitlines() or ["no output"])[-1][:300]
            why = "out of memory" if "RESOURCE_EXHAUSTED" in errors or "Out of memory" in errors else f"failed ({code})"
            rows.append(step_rows.skipped(row, f"{why}: {last}"))
        budget.record(time.monotonic() - start)
        print(json.dumps(rows[-1]), flush=True)
    report = {"engine": f"dbdist JAX engine (jax {first.get('jax', '?')}, keras {first.get('keras', '?')})",
              "device": first.get("device", "?"), "model": args.model,
              "resolution": first.get("resolution", args.resolution), "peak_tflops": first.get("peak_tflops"),
              "strategy": args.strategy, "mixed_precision": args.mixed_precision, "warmup": args.warmup, "rows": rows}
    print(step_rows.markdown(report))
    if args.json:
        step_rows.write_json(args.json, report)
    return 0 if any("skipped" not in r for r in rows) else 1


def main(argv):
    args = parse_args(argv)
    if args.one_row:
        print(_ROW_MARK + json.dumps(run_one_row(args)), flush=True)
        return 0
    return run_rows(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
