"""Image files in, RGB uint8 squares out; PNG files and sample grids back out.

Reading goes through tf.io.gfile so `gs://` paths work like local ones; decoding is PIL.
"""

import io
import os

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps

from dbdist.data import writer
from dbdist.errors import MissingInputError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_EXPECTED = "/".join(IMAGE_EXTENSIONS)
_WHITE = (255, 255, 255, 255)


def is_image_name(name):
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def list_images(directory):
    """Sorted full paths of the images in `directory` (hidden files and sub-directories skipped).

    .txt files are captions. Any other file is an error rather than silently skipped: a stray file in an
    instance folder is usually a mistake the user wants to hear about.
    """
    directory = str(directory)
    if not tf.io.gfile.isdir(directory):
        raise MissingInputError(f"{directory}: image directory does not exist "
                                f"(expected a directory of {_EXPECTED} files)")
    paths = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip("/")  # gfile marks gs:// sub-directories with a trailing slash
        path = os.path.join(directory, name)
        if name.startswith(".") or tf.io.gfile.isdir(path):
            continue
        if name.lower().endswith(".txt"):  # a sidecar caption (dbdist/data/concepts.py)
            continue
        if not is_image_name(name):
            raise UserError(f"{path}: not an image file; expected only {_EXPECTED} files "
                             f"(and .txt captions) in {directory} (move other files elsewhere)")
        paths.append(path)
    if not paths:
        raise UserError(f"{directory} contains no images; expected {_EXPECTED} files")
    return paths


def _to_rgb(img):
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: rescale 0..65535 to 0..255 (PIL's convert would clip at 255).
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _check_size(img, resolution, name, min_size):
    width, height = img.size
    side = min(width, height)
    if min_size and side < min_size:
        raise UserError(f"{name}: {width}x{height} image is smaller than --min_size={min_size} px "
                         "(its shorter side); use a larger photo or lower --min_size")
    if side < resolution:
        logging.warning("%s: %dx%d image is smaller than %d px; upscaling it, expect blur",
                        name, width, height, resolution)


def center_square(img, resolution):
    """Crops the centred square of a PIL image and resizes it to `resolution` (Lanczos)."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return img


def shorter_side_to(img, resolution, max_aspect):
    """Resizes so the shorter side is `resolution` (Lanczos), keeping the aspect ratio up to
    `max_aspect` (the longer side beyond it is cropped evenly): room for random crops."""
    width, height = img.size
    side = min(width, height)
    longest = int(side * max_aspect)
    if max(width, height) > longest:  # crop the centre of the longer side first
        if width > height:
            left = (width - longest) // 2
            img = img.crop((left, 0, left + longest, height))
        else:
            top = (height - longest) // 2
            img = img.crop((0, top, width, top + longest))
        width, height = img.size
    scale = resolution / side
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != (width, height):
        img = img.resize(size, Image.LANCZOS)
    return img


def read_image(path):
    """Reads an image file as an 8-bit RGB PIL image, EXIF orientation applied."""
    path = str(path)
    if not tf.io.gfile.exists(path):
        raise MissingInputError(f"{path}: image file does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now, so truncated or corrupt files fail here and name the file
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise UserError(f"{path}: cannot decode image ({err}); "
                         "expected a jpg/png/webp/bmp file") from err


def load_image(path, resolution, *, crop="center", min_size=0, max_aspect=2.0):
    """Reads an image file as a uint8 (H, W, 3) array.

    crop="center": the centred square, resized to `resolution` (what cached latents
    use). crop="none": resized so the shorter side is `resolution` (the longer side
    kept up to `max_aspect`), so training can crop it. An image whose shorter side is
    under `min_size` is an error; one under `resolution` is upscaled with a warning.
    """
    if crop not in ("center", "none"):
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    img = read_image(path)
    _check_size(img, resolution, str(path), min_size)
    img = center_square(img, resolution) if crop == "center" else shorter_side_to(img, resolution, max_aspect)
    return np.asarray(img, dtype=np.uint8)


def encode_png(image):
    """PNG bytes of a uint8 (H, W, 3) or (H, W) array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image, path):
    """Writes a uint8 image as a PNG, atomically (temp name in the same directory, then rename)."""
    writer.write_bytes_atomically(path, encode_png(image))


def make_grid(images, columns):
    """Tiles uint8 (H, W, 3) images row by row; smaller images and empty cells are black."""
    images = [np.asarray(x) for x in images]
    if not images:
        raise ValueError("make_grid needs at least one image, got none")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    for i, x in enumerate(images):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"images[{i}] must be uint8 (H, W, 3), got {x.dtype} {x.shape}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    cell_h = max(x.shape[0] for x in images)
    cell_w = max(x.shape[1] for x in images)
    grid = np.zeros((rows * cell_h, columns * cell_w, 3), np.uint8)
    for i, x in enumerate(images):
        top, left = (i // columns) * cell_h, (i % columns) * cell_w
        grid[top:top + x.shape[0], left:left + x.shape[1]] = x
    return grid
