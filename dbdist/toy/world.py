"""The toy world: procedural photos of one object on a background, each with its caption.

A scene is an object (ball or box) in a named colour with a surface pattern (plain,
striped or dotted) on a named background (flat or a gentle gradient). Patterns are
drawn in the object's colour and a darker shade of it; the DreamBooth subject of the
demo is a ball striped red and *white*, a look the world never shows, so the base
model cannot draw it from "a photo of a ball".

64 px: large enough that a 4x VAE (16x16 latents) keeps 4 px stripes and 5 px dots,
small enough that pretraining fits in half an hour and a DreamBooth run in minutes on
2 CPU cores. Object and background colours are far apart (>= 100 in RGB, the darker
pattern shade included) so a judge can separate them from pixels alone.

Everything is drawn from a numpy Generator: the same seed gives the same photos.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

SIZE = 64
_SUPERSAMPLE = 4  # drawn at 4x and reduced, so edges are antialiased as in a photo

OBJECTS = ("ball", "box")
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 180),
}
# Colours the world never paints an object with, but a subject may wear (and the judge knows).
EXTRA_COLOURS = {"white": (245, 245, 240)}
PATTERNS = ("plain", "striped", "dotted")
# (top, bottom) colour of each background: vertical gradients, as a sky or a lit wall.
BACKGROUNDS = {
    "grey": ((135, 135, 135), (115, 115, 115)),
    "sand": ((205, 190, 130), (190, 170, 110)),
    "sky": ((110, 160, 230), (150, 190, 240)),
    "pink": ((235, 150, 185), (220, 135, 170)),
}
SHADE = 0.45  # the pattern's second colour: the object colour times this
BORDER = 4  # px at the left and right kept free of the object (the judge reads the background there)


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a photo shows. `accent` is the pattern's second colour; None: a shade of `colour`."""

    object: str
    colour: str
    pattern: str
    background: str
    accent: str = None

    def __post_init__(self):
        for value, allowed, what in ((self.object, OBJECTS, "object"), (self.pattern, PATTERNS, "pattern"),
                                     (self.background, BACKGROUNDS, "background"),
                                     (self.colour, {**COLOURS, **EXTRA_COLOURS}, "colour")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {sorted(allowed)}, got {value!r}")
        if self.accent is not None and self.accent not in {**COLOURS, **EXTRA_COLOURS}:
            raise ValueError(f"accent must be a named colour or None, got {self.accent!r}")


# The demo's subject: a red-and-white striped ball ("a photo of a sks ball").
SUBJECT = dict(object="ball", colour="red", pattern="striped", accent="white")


def rgb(name):
    return np.asarray({**COLOURS, **EXTRA_COLOURS}[name], np.float64)


def caption(scene, *, colour=True, pattern=True, background=True):
    """'a photo of a green striped ball on a sky background'; each attribute may be left out."""
    words = ["a photo of a"]
    if colour:
        words.append(scene.colour)
    if pattern:
        words.append(scene.pattern)
    words.append(scene.object)
    if background:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def random_scene(rng, accent_share=0.0):
    """A scene of the world; with `accent_share` > 0 that share of patterned objects wear a second named
    colour (white included) instead of their shade: photos for the VAE, a codec that must also
    represent looks the base model never draws, such as the demo's red-and-white subject."""
    scene = Scene(object=str(rng.choice(OBJECTS)), colour=str(rng.choice(list(COLOURS))),
                  pattern=str(rng.choice(PATTERNS)), background=str(rng.choice(list(BACKGROUNDS))))
    if scene.pattern != "plain" and rng.uniform() < accent_share:
        scene = dataclasses.replace(scene, accent=str(rng.choice(list(COLOURS) + list(EXTRA_COLOURS))))
    return scene


# The caption of a photo left uncaptioned: classifier-free guidance needs a prediction that knows
# nothing of the scene, and the records cannot hold an empty caption, so the toy model's
# unconditional prompt (its --negative_prompt) is this one.
UNCONDITIONAL = "a photo"


def random_caption(rng, scene, drop=0.3, unconditional=0.1):
    """The scene's caption with each of colour, pattern and background left out with probability `drop`,
    so the model also learns what "a photo of a ball" (any colour, pattern, background) looks like;
    with probability `unconditional` only UNCONDITIONAL."""
    if rng.uniform() < unconditional:
        return UNCONDITIONAL
    keep = rng.uniform(size=3) >= drop
    return caption(scene, colour=keep[0], pattern=keep[1], background=keep[2])


def _background(name, size):
    top, bottom = (np.asarray(c, np.float64) for c in BACKGROUNDS[name])
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    return np.broadcast_to((1 - t) * top + t * bottom, (size, size, 3)).copy()


def _surface(rng, scene, u, v):
    """Base colour at face coordinates (u, v) in [-1, 1] (the object's own frame)."""
    main = rgb(scene.colour)
    second = rgb(scene.accent) if scene.accent else main * SHADE
    if scene.pattern == "plain":
        on = np.zeros(u.shape, bool)
    elif scene.pattern == "striped":
        angle = rng.uniform(-0.5, 0.5)
        phase = rng.uniform(0, 1)
        on = np.floor((v * np.cos(angle) + u * np.sin(angle)) * 3.0 + phase) % 2 == 1
    else:  # dotted: dots on a jittered square lattice
        pitch, radius = 0.62, 0.17
        off_u, off_v = rng.uniform(0, pitch, 2)
        du = (u + off_u) % pitch - pitch / 2
        dv = (v + off_v) % pitch - pitch / 2
        on = du * du + dv * dv <= radius * radius
    return np.where(on[..., None], second, main)


def _paint(rng, scene, canvas):
    big = canvas.shape[0]
    radius = big * rng.uniform(0.2, 0.28)
    margin = radius * 1.45 + BORDER * _SUPERSAMPLE  # a rotated box reaches radius * sqrt(2)
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(radius * 1.45, big - radius * 1.45)
    y, x = np.mgrid[0:big, 0:big].astype(np.float64)
    u, v = (x - cx) / radius, (y - cy) / radius
    if scene.object == "ball":
        inside = u * u + v * v <= 1.0
        depth = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
        light = 0.85 + 0.15 * np.clip(depth - 0.3 * (u + v), 0.0, 1.0)
    else:
        angle = rng.uniform(-0.4, 0.4)
        u, v = u * np.cos(angle) + v * np.sin(angle), -u * np.sin(angle) + v * np.cos(angle)
        inside = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
        light = 0.85 + 0.15 * np.clip(0.5 - 0.5 * (u + v), 0.0, 1.0)
    colour = _surface(rng, scene, u, v) * light[..., None]
    canvas[inside] = colour[inside]


def draw(scene, rng, size=SIZE):
    """uint8 (size, size, 3) photo of `scene`; position, size, rotation and pattern phase come from `rng`."""
    canvas = _background(scene.background, size * _SUPERSAMPLE)
    _paint(rng, scene, canvas)
    img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.BOX))


def sample(seed, count, drop=0.3, accent_share=0.0):
    """[(image, caption, scene)] of `count` random scenes; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng, accent_share)
        out.append((draw(scene, rng), random_caption(rng, scene, drop), scene))
    return out


def subject_photos(seed, count, backgrounds=None):
    """Photos of the demo's subject (the red-and-white striped ball) on the given backgrounds (cycled)."""
    rng = np.random.default_rng(seed)
    backgrounds = backgrounds or list(BACKGROUNDS)
    return [draw(Scene(background=backgrounds[i % len(backgrounds)], **SUBJECT), rng) for i in range(count)]


def write_captioned_folder(directory, seed, count, drop=0.3):
    """world-NNNNN.png + world-NNNNN.txt (its caption) in `directory`, for make_tfrecords."""
    from dbdist.data import images
    from dbdist.data.writer import write_bytes_atomically

    os.makedirs(directory, exist_ok=True)
    for i, (image, text, _) in enumerate(sample(seed, count, drop)):
        stem = os.path.join(directory, f"world-{i:05d}")
        images.save_png(image, stem + ".png")
        write_bytes_atomically(stem + ".txt", (text + "\n").encode())
