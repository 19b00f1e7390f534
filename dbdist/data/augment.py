"""Training-time augmentation: crop and horizontal flip, keyed to examples, not to replicas.

Each decision comes from a stateless draw keyed by (seed, data step, position of
the example in the global batch, stream), like the training noise in
dbdist/data/example_noise.py but with a salt of its own, so a global batch
is augmented the same way on one device, N replicas or N workers, and after a
resume.
"""

import dataclasses

import tensorflow as tf

from dbdist.data import features

_ALG = "philox"  # named so every device and XLA draws the same numbers
_SALT = 0xA06
_FLIP, _CROP_Y, _CROP_X = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Augmentation:
    random_flip: bool = False   # mirror half the examples (pixels) / take the mirrored latents
    center_crop: bool = True    # False: a random square of the stored image (pixel records only)


def _key(seed, step, position, stream, purpose):
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SALT, tf.int64)])
    for value in (step, position, stream * 4 + purpose):
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64), alg=_ALG)
    return key


def _uniform_int(key, maxval):
    """An int32 in [0, maxval) (maxval >= 1, a tensor)."""
    return tf.random.stateless_uniform([], seed=key, minval=0, maxval=maxval, dtype=tf.int32, alg=_ALG)


def flip_drawn(seed, step, position, stream):
    """Whether this example is mirrored (probability 1/2)."""
    return tf.equal(_uniform_int(_key(seed, step, position, stream, _FLIP), 2), 1)


def augment_pixels(image, resolution, augmentation: Augmentation, *, seed, step, position, stream):
    """uint8 (H, W, 3) with min(H, W) == resolution -> uint8 (resolution, resolution, 3)."""
    if augmentation.center_crop:
        image = features.center_crop(image, resolution)
    else:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        top = _uniform_int(_key(seed, step, position, stream, _CROP_Y), height - resolution + 1)
        left = _uniform_int(_key(seed, step, position, stream, _CROP_X), width - resolution + 1)
        image = tf.ensure_shape(image[top:top + resolution, left:left + resolution], [resolution, resolution, 3])
    if augmentation.random_flip:
        image = tf.cond(flip_drawn(seed, step, position, stream), lambda: image[:, ::-1], lambda: image)
    return image


def pick_latents(example, augmentation: Augmentation, *, seed, step, position, stream):
    """(mean, logvar) of a decoded latent record: the mirrored crop's when a flip is drawn."""
    mean, logvar = example[features.LATENT_MEAN], example[features.LATENT_LOGVAR]
    if not augmentation.random_flip:
        return mean, logvar
    flip = flip_drawn(seed, step, position, stream)
    return (tf.where(flip, example[features.LATENT_MEAN_FLIPPED], mean),
            tf.where(flip, example[features.LATENT_LOGVAR_FLIPPED], logvar))
