"""Reads a toy-world photo from its pixels: which object, colour, pattern and background it shows.

Analytic, since we drew the world (dbdist/toy/world.py):
- background: each row's colour is read at the left and right borders (objects keep off
  them); the named background is the nearest row profile;
- object mask: pixels farther than MASK_DISTANCE from their row's background colour;
- shape: the roundness of the mask's convex hull, 4 pi area / perimeter^2 (1 for a disc, pi/4 for
  a square at any rotation). On 600 world photos balls measure 0.978-0.993 and boxes 0.785-0.852;
  SHAPE_THRESHOLD sits between them. Unlike the share of the circumscribed circle a hull fills
  (what this judge used first), it does not take a slightly squashed or lumpy ball, as a small
  model draws, for a box: an ellipse of aspect 1.25 fills only 0.80 of its circle but is 0.99 round;
- pattern: the mask's inner pixels split into two colour clusters (2-means); clusters
  closer than PATTERN_CONTRAST are one colour (plain); else the darker cluster covers half
  the surface for stripes, a fifth for dots;
- colour: the nearest named colour to the brighter cluster (or to the median of a plain
  object); the accent is the darker cluster's: "shade" when it is the main colour darkened,
  as every patterned object of the world, else a named colour (the red of a red-and-white ball).

Thresholds sit between the world's classes with room for the blur a small VAE adds
(tests/test_toy_world.py measures the accuracy on clean and blurred photos).
"""

import dataclasses

import numpy as np

from dbdist.toy import world

MASK_DISTANCE = 45.0
MIN_OBJECT_PIXELS = 40  # a smaller mask is noise, not an object
SHAPE_THRESHOLD = 0.915  # midway between the world's boxes (<= 0.852) and balls (>= 0.978)
PATTERN_CONTRAST = 38.0  # plain objects measure 11-30 (shading), patterned 49-149 (blurred or not)
STRIPE_SHARE = 0.38  # the darker cluster's share of the surface: stripes 0.41-0.53, dots 0.17-0.35
_NAMED = {**world.COLOURS, **world.EXTRA_COLOURS}


@dataclasses.dataclass(frozen=True)
class Verdict:
    object: str        # "ball", "box" or "none"
    colour: str        # nearest named colour of the main (brighter) surface
    pattern: str       # "plain", "striped", "dotted"
    background: str    # nearest named background
    accent: str = None  # the pattern's second colour: "shade" (the world's), a named colour, or None (plain)

    def is_subject(self, object="ball", colour="red", pattern="striped", accent="white"):
        """Whether this shows the subject: a ball striped in both colours (either one may read as the main)."""
        return (self.object == object and self.pattern == pattern
                and {self.colour, self.accent} == {colour, accent})


def _row_background(image):
    edges = np.concatenate([image[:, :world.BORDER - 1], image[:, -(world.BORDER - 1):]], axis=1)
    return np.median(edges, axis=1)  # (H, 3)


def _background_name(rows):
    t = np.linspace(0.0, 1.0, rows.shape[0])[:, None]
    best, name = None, None
    for candidate, (top, bottom) in world.BACKGROUNDS.items():
        profile = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
        distance = np.mean(np.linalg.norm(rows - profile, axis=1))
        if best is None or distance < best:
            best, name = distance, candidate
    return name


def _erode(mask, steps):
    for _ in range(steps):
        shrunk = mask.copy()
        shrunk[1:] &= mask[:-1]
        shrunk[:-1] &= mask[1:]
        shrunk[:, 1:] &= mask[:, :-1]
        shrunk[:, :-1] &= mask[:, 1:]
        mask = shrunk
    return mask


def _convex_hull(points):
    """Vertices (counter-clockwise) of the convex hull of (N, 2) points: Andrew's monotone chain."""
    points = sorted(set(map(tuple, points)))

    def half(sequence):
        chain = []
        for p in sequence:
            while len(chain) >= 2 and np.cross(np.subtract(chain[-1], chain[-2]), np.subtract(p, chain[-2])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]
    return np.asarray(half(points) + half(points[::-1]), np.float64)


def _shape(mask):
    """The hull, not the mask: a stripe as pale as the background leaves notches in the mask's rim."""
    hull = _convex_hull(np.argwhere(mask))
    if len(hull) < 3:
        return "box"
    return "ball" if roundness(hull) >= SHAPE_THRESHOLD else "box"


def roundness(polygon):
    """4 pi area / perimeter^2 of a convex polygon's (N, 2) vertices: 1 for a circle, pi/4 for a square."""
    x, y = polygon[:, 0], polygon[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    perimeter = np.sum(np.linalg.norm(polygon - np.roll(polygon, 1, axis=0), axis=1))
    return 4 * np.pi * area / perimeter ** 2


def _two_means(pixels):
    """(brighter centre, darker centre, darker share) of a 2-means split of (N, 3) colours."""
    brightness = pixels.sum(axis=1)
    centres = np.stack([pixels[brightness >= np.percentile(brightness, 80)].mean(0),
                        pixels[brightness <= np.percentile(brightness, 20)].mean(0)])
    for _ in range(10):
        nearest = np.argmin(np.linalg.norm(pixels[:, None] - centres[None], axis=2), axis=1)
        centres = np.stack([pixels[nearest == k].mean(0) if np.any(nearest == k) else centres[k] for k in (0, 1)])
    if centres[1].sum() > centres[0].sum():
        centres, nearest = centres[::-1], 1 - nearest
    return centres[0], centres[1], float(np.mean(nearest == 1))


def _nearest_colour(value):
    return min(_NAMED, key=lambda name: np.linalg.norm(value - np.asarray(_NAMED[name], float)))


def judge(image):
    """Verdict of one uint8 (H, W, 3) photo."""
    image = np.asarray(image, np.float64)[..., :3]
    rows = _row_background(image)
    background = _background_name(rows)
    mask = np.linalg.norm(image - rows[:, None], axis=2) > MASK_DISTANCE
    if mask.sum() < MIN_OBJECT_PIXELS:
        return Verdict("none", "none", "none", background)
    inner = _erode(mask, 2)
    pixels = image[inner] if inner.sum() >= MIN_OBJECT_PIXELS // 2 else image[mask]
    bright, dark, dark_share = _two_means(pixels)
    if np.linalg.norm(bright - dark) < PATTERN_CONTRAST:
        return Verdict(_shape(mask), _nearest_colour(np.median(pixels, axis=0)), "plain", background)
    colour = _nearest_colour(bright)
    shade = np.asarray(_NAMED[colour], float) * world.SHADE
    dark_name = _nearest_colour(dark)
    accent = "shade" if np.linalg.norm(dark - shade) < np.linalg.norm(dark - np.asarray(_NAMED[dark_name], float)) \
        else dark_name
    pattern = "striped" if dark_share >= STRIPE_SHARE else "dotted"
    return Verdict(_shape(mask), colour, pattern, background, accent)


def judge_all(images):
    return [judge(image) for image in images]
