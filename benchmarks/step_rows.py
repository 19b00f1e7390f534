"""What the two DreamBooth step benchmarks share: the rows, the FLOP count, the peak, the report.

benchmarks/jax_dreambooth_step.py (dbdist's JAX engine) and benchmarks/diffusers_peer_step.py
(diffusers' train_dreambooth.py step in PyTorch) run the same rows and write the same JSON, so
benchmarks/gpu_side_by_side.py can put them in one table. Pure Python: it imports neither JAX nor
PyTorch, since each script runs in a process that has only one of them loaded.
"""

import dataclasses
import json
import os
import time

# The UNet's forward + backward per 512 px image (64x64 latents, 77 tokens), measured with
# torch.utils.flop_counter.FlopCounterMode on diffusers' UNet2DConditionModel with SD 1.5's config
# (issue 11). FLOPs grow with the latent area, so other sizes scale by (resolution / 512)^2; the
# attention's quadratic part makes that a slight under-count above 512 px, an over-count below.
UNET_TRAIN_FLOP_PER_512PX_IMAGE = 2.47e12

# Dense bf16 tensor-core peak, TFLOP/s. NVIDIA's H100 and H200 datasheets give "BF16 Tensor Core
# 1,979 teraFLOPS" for the SXM parts, footnoted "with sparsity" (https://www.nvidia.com/en-us/
# data-center/h200/, https://www.nvidia.com/en-us/data-center/h100/); dense is half of that:
# 989.4 in the H100 Tensor Core GPU Architecture whitepaper's table (BF16 989.4 / 1978.9 sparse).
# The H200 is the same GH100 compute with more memory. Anything else: pass --peak_tflops.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4}


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed configuration: `batch` UNet images per step (half instance, half class)."""

    batch: int
    vae_in_step: bool = False  # pixels in, the frozen VAE encoder inside the step
    gradient_checkpointing: bool = False

    @property
    def name(self):
        return f"b{self.batch}" + ("-vae" if self.vae_in_step else "") + ("-ckpt" if self.gradient_checkpointing else "")

    def notes(self):
        parts = ["pixels in, VAE encoder in the step" if self.vae_in_step else "cached latents"]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        return ", ".join(parts)


# In order of importance: a run that runs out of its time budget drops the last rows first.
DEFAULT_ROWS = (Row(2), Row(8), Row(32), Row(2, vae_in_step=True), Row(32, gradient_checkpointing=True))


def parse_rows(text):
    """'2,8,32,2-vae,32-ckpt' -> Rows (each a batch, optionally -vae and/or -ckpt)."""
    rows = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        batch, *options = item.split("-")
        unknown = set(options) - {"vae", "ckpt"}
        if not batch.isdigit() or int(batch) < 2 or int(batch) % 2 or unknown:
            raise ValueError(f"a row is an even UNet batch >= 2 (instance + class halves) with optional -vae / -ckpt, "
                             f"e.g. 2,8,32,2-vae,32-ckpt; got {item!r}")
        rows.append(Row(int(batch), "vae" in options, "ckpt" in options))
    return tuple(rows)


def flop_per_image(resolution):
    return UNET_TRAIN_FLOP_PER_512PX_IMAGE * (resolution / 512) ** 2


def peak_tflops(device_kind, override=0.0):
    """The override, else the table's value for a device whose name contains a known GPU, else 0."""
    if override:
        return override
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name.lower() in (device_kind or "").lower():
            return tflops
    return 0.0


def result(row, *, resolution, step_seconds, compile_seconds, peak_bytes, peak_tflops_value, timed_steps, loss):
    """One row of the JSON report. MFU counts the UNet's FLOPs only (not the VAE encoder's)."""
    images_per_sec = row.batch / step_seconds
    mfu = images_per_sec * flop_per_image(resolution) / (peak_tflops_value * 1e12) if peak_tflops_value else None
    return {
        "row": row.name, "batch": row.batch, "vae_in_step": row.vae_in_step,
        "gradient_checkpointing": row.gradient_checkpointing, "notes": row.notes(),
        "images_per_sec": round(images_per_sec, 3), "step_seconds": round(step_seconds, 5),
        "mfu": None if mfu is None else round(mfu, 4),
        "peak_memory_gib": None if peak_bytes is None else round(peak_bytes / 2**30, 2),
        "compile_seconds": round(compile_seconds, 2), "timed_steps": timed_steps, "loss": loss,
    }


def skipped(row, why):
    return {"row": row.name, "batch": row.batch, "vae_in_step": row.vae_in_step,
            "gradient_checkpointing": row.gradient_checkpointing, "notes": row.notes(), "skipped": why}


class Budget:
    """Wall-clock budget for a whole script: a row starts only if the slowest row so far would fit."""

    def __init__(self, seconds):
        self.seconds, self.start, self.slowest = seconds, time.monotonic(), 0.0

    def left(self):
        return self.seconds - (time.monotonic() - self.start)

    def fits_another(self):
        return self.left() > 1.2 * self.slowest

    def record(self, seconds):
        self.slowest = max(self.slowest, seconds)


def _cell(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def markdown(report):
    """The report's rows as a markdown table."""
    lines = [f"{report['engine']} on {report['device']} ({report['resolution']} px, {report['model']}, "
             f"peak {report['peak_tflops'] or 'unknown'} TFLOP/s)", "",
             "| row | UNet batch | img/s | MFU | peak GiB | compile s | notes |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {r['batch']} | - | - | - | - | {r['notes']}; skipped: {r['skipped']} |")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['row']} | {r['batch']} | {r['images_per_sec']:.2f} | {mfu} | "
                     f"{_cell(r['peak_memory_gib'], '.2f')} | {r['compile_seconds']:.1f} | {r['notes']} |")
    return "\n".join(lines)


def write_json(path, report):
    """Written under a temporary name and renamed: a reader never sees half a report."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(temporary, path)


def side_by_side(peer, ours):
    """One markdown table of the two reports, row by row (rows missing from either show '-')."""
    peer_rows = {r["row"]: r for r in peer.get("rows", [])}
    our_rows = {r["row"]: r for r in ours.get("rows", [])}
    names = list(dict.fromkeys([*our_rows, *peer_rows]))

    def speed(r):
        return None if r is None or "skipped" in r else r["images_per_sec"]

    def mfu(r):
        return "-" if speed(r) is None or r["mfu"] is None else f"{100 * r['mfu']:.1f}%"

    def gib(r):
        return "-" if speed(r) is None else _cell(r["peak_memory_gib"], ".1f")

    lines = [f"peer: {peer.get('engine', '?')} on {peer.get('device', '?')}; "
             f"dbdist: {ours.get('engine', '?')} on {ours.get('device', '?')}; "
             f"{ours.get('model', peer.get('model'))} at {ours.get('resolution', peer.get('resolution'))} px", "",
             "| row | UNet batch | peer img/s | dbdist img/s | ratio | MFU peer / dbdist | peak GiB peer / dbdist | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        p, o = peer_rows.get(name), our_rows.get(name)
        ps, os_ = speed(p), speed(o)
        ratio = f"{os_ / ps:.2f}x" if ps and os_ else "-"
        notes = (o or p)["notes"]
        for who, r in (("peer", p), ("dbdist", o)):
            if r is not None and "skipped" in r:
                notes += f"; {who} skipped: {r['skipped']}"
        lines.append(f"| {name} | {(o or p)['batch']} | {'-' if ps is None else f'{ps:.1f}'} | "
                     f"{'-' if os_ is None else f'{os_:.1f}'} | {ratio} | {mfu(p)} / {mfu(o)} | {gib(p)} / {gib(o)} | "
                     f"{notes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/step_rows.py PEER.json DBDIST.json  (prints the side-by-side table)")
    with open(sys.argv[1]) as f_peer, open(sys.argv[2]) as f_ours:
        print(side_by_side(json.load(f_peer), json.load(f_ours)))
