"""python -m tfrecords_tools.preview --data_dir=D --output=F.png: a captioned grid of records.

How to run:
  python -m tfrecords_tools.preview --data_dir=gs://bucket/records --output=/tmp/preview.png --num=16
What to expect: up to --num records of --kind (both: instance ones first, then class
ones, as evenly as there are), in index order, tiled row by row. Pixel records show
the centre crop (what training sees unless --nocenter_crop); latent records show their
posterior mean decoded by the VAE decoder of the weights the records were made with
(--weights overrides; `tiny` decodes with its random weights, i.e. noise). Tiles
under MIN_TILE px are enlarged (nearest neighbour). Under each tile: its kind and index
(and concept, when there are several), then its prompt, wrapped and cut to fit.
The PNG is written atomically.
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import math

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from dbdist import common_flags, errors
from dbdist.config import model_config, with_resolution
from dbdist.data import features, images
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import read_kind, read_prompt_table
from dbdist.diffusion.ddim import pixels_to_uint8
from dbdist.errors import UserError
from dbdist.weights.pretrained import load_networks

# --help lists the shared flags (dbdist/common_flags.py) this command reads, not only its own.
for _shared_flag in ("data_dir", "weights", "seed"):
    flags.declare_key_flag(_shared_flag)

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "PNG file to write the preview grid to (local or gs://).")
flags.DEFINE_integer("num", 16, "Records to show (fewer if the data directory has fewer).")
flags.DEFINE_enum("kind", "both", ["instance", "class", "both"], "Which records to show.")

MIN_TILE = 128       # px: smaller images are enlarged by an integer factor to at least this
LINE_HEIGHT = 12     # px per caption line (PIL's default bitmap font is 11 px high)
CAPTION_LINES = 4    # the kind/index(/concept) line, then up to 3 lines of prompt
CAPTION_HEIGHT = CAPTION_LINES * LINE_HEIGHT + 4
DECODE_BATCH = 4     # latents decoded per VAE call


def _font():
    # Pillow >= 10.1 returns a FreeType font from load_default(); the bitmap one is the same everywhere.
    load = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return load()


def _wrap(text, draw, font, width, max_lines):
    """Greedy word wrap to `width` px; the last line ends with '...' when text is cut."""
    lines, line = [], ""
    for word in text.split():
        while word:
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) <= width:
                line, word = candidate, ""
            elif line:
                lines.append(line)
                line = ""
            else:  # one word wider than the tile: split it
                cut = 1
                while cut < len(word) and draw.textlength(word[:cut + 1], font=font) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "..."]
    return lines


def captioned_tile(image, title, prompt):
    """uint8 image (enlarged to >= MIN_TILE px) over a white strip with `title` and `prompt`."""
    scale = max(1, math.ceil(MIN_TILE / max(image.shape[:2])))
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    height, width = image.shape[:2]
    strip = Image.new("RGB", (width, CAPTION_HEIGHT), "white")
    draw, font = ImageDraw.Draw(strip), _font()
    if isinstance(font, ImageFont.ImageFont):  # the bitmap font has latin-1 glyphs only
        title, prompt = (t.encode("latin-1", "replace").decode("latin-1") for t in (title, prompt))
    text = _wrap(title, draw, font, width - 4, 1) + _wrap(prompt, draw, font, width - 4, CAPTION_LINES - 1)
    for i, line in enumerate(text):
        draw.text((2, 2 + i * LINE_HEIGHT), line, fill="black", font=font)
    return np.concatenate([image, np.asarray(strip, np.uint8)], axis=0)


def pick_counts(manifest, num, kind):
    """{kind name: records to show}: `num` shared as evenly as the kinds' record counts allow."""
    names = [k for k in features.KIND_NAMES if kind in (k, "both") and manifest.num_examples(k)]
    take = dict.fromkeys(names, 0)
    while sum(take.values()) < num and any(take[k] < manifest.num_examples(k) for k in names):
        for k in names:
            if take[k] < manifest.num_examples(k) and sum(take.values()) < num:
                take[k] += 1
    return take


def _decode_latents(manifest, means, weights):
    """Posterior means (N, h, w, c) -> uint8 images through the preset's VAE decoder."""
    config = with_resolution(model_config(manifest.preset), manifest.resolution)
    decoder = load_networks(config, ("vae_decoder",), weights).vae_decoder
    # The decoder takes latents scaled as the UNet sees them (it divides by scaling_factor itself).
    scaled = np.stack(means) * config.vae.scaling_factor
    out = []
    for start in range(0, len(scaled), DECODE_BATCH):
        out.extend(pixels_to_uint8(decoder(scaled[start:start + DECODE_BATCH], training=False)))
    return out


def preview(data_dir, num=16, kind="both", weights=None):
    """The captioned grid (uint8 (H, W, 3)) of up to `num` records of `kind`.

    Latent records are decoded by the manifest preset's VAE decoder from `weights`
    (a directory as --weights; None: the weights the records were made with, per the manifest).
    """
    data_dir = str(data_dir)
    if num < 1:
        raise UserError(f"num must be >= 1, got {num}")
    manifest = read_manifest(data_dir)
    take = pick_counts(manifest, num, kind)
    if not take:
        raise UserError(f"{data_dir} has no {kind} records")
    table = read_prompt_table(data_dir, manifest)
    pictures, titles, prompts = [], [], []
    for kind_name, count in take.items():
        records, _ = read_kind(data_dir, manifest, kind_name)
        for record in records[:count]:
            example = features.decode_example(record, manifest.layout)
            if manifest.record_format == features.PIXELS:
                pictures.append(features.center_crop(example["image"], manifest.resolution).numpy())
            else:
                pictures.append(example["latent_mean"].numpy())
            concept = f", concept {int(example['concept'])}" if len(manifest.concepts) > 1 else ""
            titles.append(f"{kind_name} {int(example['index'])}{concept}")
            prompts.append(table.prompts[int(example["prompt_id"])])
    if manifest.record_format == features.LATENTS:
        pictures = _decode_latents(manifest, pictures, manifest.weights if weights is None else weights)
    tiles = [captioned_tile(p, t, s) for p, t, s in zip(pictures, titles, prompts)]
    return images.make_grid(tiles, columns=math.ceil(math.sqrt(len(tiles))))


def main(argv):
    del argv
    common_flags.require("data_dir", "output")
    grid = preview(common_flags.DATA_DIR.value, FLAGS.num, FLAGS.kind,
                   weights=common_flags.WEIGHTS.value or None)
    images.save_png(grid, FLAGS.output)  # atomic: a temp file renamed into place
    print(f"wrote {FLAGS.output} ({grid.shape[1]}x{grid.shape[0]} px)")


if __name__ == "__main__":
    errors.run(main)
