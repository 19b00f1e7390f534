"""Procedural sample images for the demo and tests: no network, deterministic per seed.

Instance images show one distinctive subject (a red ball with white stripes) at varied
positions, scales and stripe angles on varied backgrounds; class images show generic
balls of random solid colours, which is what prior preservation should keep generating.
"""

import os

import numpy as np
import tensorflow as tf
from PIL import Image

from dbdist.data import images

_SUPERSAMPLE = 2  # draw at 2x and downsample, so ball edges are antialiased


def _background(rng, size):
    """A vertical two-colour gradient with a darker floor below a random horizon."""
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = (1 - t) * top + t * bottom
    horizon = int(size * rng.uniform(0.55, 0.8))
    sky[horizon:] *= 0.7
    return np.broadcast_to(sky, (size, size, 3)).copy()


def _ball(rng, canvas, colour_at):
    """Paints a shaded ball whose base colour at (u, v) on its face is `colour_at(u, v)`."""
    size = canvas.shape[0]
    radius = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(radius, size - radius, 2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (x - cx) / radius, (y - cy) / radius
    inside = u * u + v * v <= 1.0
    depth = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    light = 0.35 + 0.65 * np.clip(depth * 0.8 - u * 0.3 - v * 0.3, 0.0, 1.0)
    canvas[inside] = (colour_at(u, v) * light[..., None])[inside]


def _render(rng, size, colour_at):
    big = size * _SUPERSAMPLE
    canvas = _background(rng, big)
    _ball(rng, canvas, colour_at)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.LANCZOS))


def _striped(rng):
    angle = rng.uniform(-0.6, 0.6)  # the stripes tilt a little; colours and count never change

    def colour_at(u, v):
        stripe = np.floor((v * np.cos(angle) + u * np.sin(angle)) * 3.5) % 2 == 0
        return np.where(stripe[..., None], [220.0, 30.0, 40.0], [250.0, 250.0, 245.0])
    return colour_at


def _plain(rng):
    colour = rng.uniform(20, 255, 3)
    return lambda u, v: np.broadcast_to(colour, u.shape + (3,))


def write_demo_images(instance_dir, class_dir, *, num_instance=4, num_class=8, size=128, seed=0):
    """Writes instance-NNN.png and class-NNN.png files; returns (instance_paths, class_paths)."""
    rng = np.random.default_rng(seed)
    written = []
    for directory, prefix, count, pattern in ((instance_dir, "instance", num_instance, _striped),
                                              (class_dir, "class", num_class, _plain)):
        tf.io.gfile.makedirs(str(directory))
        paths = [os.path.join(str(directory), f"{prefix}-{i:03d}.png") for i in range(count)]
        for path in paths:
            images.save_png(_render(rng, size, pattern(rng)), path)
        written.append(paths)
    return tuple(written)
