"""The one TFRecord feature spec: imported by the writer, the reader and tfrecords_tools/.

One record is one training example: the id of its prompt, which stream (instance or
class) and which concept it belongs to, and either
  - pixels: the image as a lossless PNG whose shorter side is the resolution (the
    longer side is kept, up to 2x, so training can crop it at random), or
  - latents: the VAE posterior of the centre crop, mean and log-variance (not one
    sample, so training still samples a new latent every step), and, when made with
    --random_flip, the posterior of the mirrored crop as well.
`RecordLayout` (from the manifest) says which, and with which shapes.

Each distinct prompt's text, token ids and cached text embedding are stored once, as a
record of the prompt table (`prompts-*.tfrecord`, dbdist/data/prompt_table.py), not
with every example: an sd-v2 embedding alone is 308 KiB.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from dbdist.data import images
# Keys of the flat training batch the reader yields: one TensorFlow-free list, re-exported here.
from dbdist.data.batch_keys import (  # noqa: F401
    CLASS_EMBEDDING, CLASS_LATENT_LOGVAR, CLASS_LATENT_MEAN, CLASS_NOISE, CLASS_PIXELS, CLASS_TIMESTEP,
    CLASS_TOKEN_IDS, CLASS_VAE_NOISE, EXAMPLE_POSITION, INSTANCE_EMBEDDING, INSTANCE_LATENT_LOGVAR,
    INSTANCE_LATENT_MEAN, INSTANCE_NOISE, INSTANCE_PIXELS, INSTANCE_TIMESTEP, INSTANCE_TOKEN_IDS, INSTANCE_VAE_NOISE,
)

# Record feature keys.
IMAGE = "image"              # PNG bytes of an RGB uint8 image, shorter side == resolution
LATENT_MEAN = "latent_mean"  # raw little-endian float32 bytes of a latent_shape array
LATENT_LOGVAR = "latent_logvar"
LATENT_MEAN_FLIPPED = "latent_mean_flipped"  # the same for the horizontally flipped crop
LATENT_LOGVAR_FLIPPED = "latent_logvar_flipped"
PROMPT_ID = "prompt_id"      # int64: the example's row of the prompt table
KIND = "kind"                # int64: KIND_INSTANCE or KIND_CLASS
CONCEPT = "concept"          # int64: position of the concept in the manifest's list
INDEX = "index"              # int64, position of the example within its kind (all concepts)
SOURCE = "source"            # bytes: base name of the source image file
# Prompt-table record keys (PROMPT_ID too: the row).
PROMPT = "prompt"            # utf-8 bytes
TOKEN_IDS = "token_ids"      # int64 list of length max_length
EMBEDDING = "text_embedding"  # raw little-endian float32 bytes of a (max_length, width) array

KIND_INSTANCE = 0
KIND_CLASS = 1
KIND_NAMES = ("instance", "class")

PIXELS, LATENTS = "pixels", "latents"
RECORD_FORMATS = (PIXELS, LATENTS)
# Stored pixel images keep at most this aspect ratio (longer side / shorter side).
MAX_STORED_ASPECT = 2.0


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """What the records of one data directory hold (from its manifest)."""

    resolution: int
    embedding_shape: tuple            # (max_length, width)
    record_format: str = PIXELS       # PIXELS or LATENTS
    latent_shape: tuple = ()          # (h, w, channels) with LATENTS
    flipped_latents: bool = False     # LATENTS also hold the mirrored crop's posterior

    def __post_init__(self):
        object.__setattr__(self, "embedding_shape", tuple(int(d) for d in self.embedding_shape))
        object.__setattr__(self, "latent_shape", tuple(int(d) for d in self.latent_shape))
        if self.record_format not in RECORD_FORMATS:
            raise ValueError(f"record_format must be one of {RECORD_FORMATS}, got {self.record_format!r}")
        if (self.record_format == LATENTS) != (len(self.latent_shape) == 3):
            raise ValueError(f"latent_shape must be (h, w, channels) exactly when record_format is "
                             f"'{LATENTS}', got {self.latent_shape} with '{self.record_format}'")
        if self.flipped_latents and self.record_format != LATENTS:
            raise ValueError("flipped_latents needs record_format 'latents'")

    @property
    def max_length(self):
        return self.embedding_shape[0]


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float_bytes(array, name, shape=None):
    array = np.asarray(array)
    if array.dtype != np.float32 or (shape is not None and array.shape != tuple(shape)):
        raise ValueError(f"{name} must be float32 {tuple(shape) if shape else ''}, got {array.dtype} {array.shape}")
    return _bytes([array.astype("<f4").tobytes()])


def serialize_prompt(*, prompt_id, prompt, token_ids, embedding):
    """One serialized prompt-table record: row `prompt_id`'s text, token ids and embedding.

    `embedding` is float32 (max_length, width); `token_ids` integers (max_length,).
    """
    embedding = np.asarray(embedding)
    if embedding.dtype != np.float32 or embedding.ndim != 2:
        raise ValueError(f"embedding must be float32 (max_length, width), got {embedding.dtype} {embedding.shape}")
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or token_ids.shape[0] != embedding.shape[0] \
            or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"token_ids must be integers of shape ({embedding.shape[0]},) to match the "
                         f"embedding, got {token_ids.dtype} {token_ids.shape}")
    if prompt_id < 0:
        raise ValueError(f"prompt_id must be >= 0, got {prompt_id}")
    feature = {
        PROMPT_ID: _ints([prompt_id]),
        PROMPT: _bytes([prompt.encode("utf-8")]),
        TOKEN_IDS: _ints(token_ids),
        EMBEDDING: _float_bytes(embedding, "embedding"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def serialize_example(*, prompt_id, kind, index, source, concept=0, image=None, latents=None, flipped_latents=None):
    """One serialized tf.train.Example.

    Give `image` (uint8 (H, W, 3)) for a pixel record, or `latents` = (mean, logvar),
    float32 (h, w, c) each, and optionally `flipped_latents` likewise, for a latent record.
    `prompt_id` is the row of the example's prompt in the prompt table.
    """
    if (image is None) == (latents is None):
        raise ValueError("a record holds either `image` (pixels) or `latents` (mean, logvar), not both/neither")
    if kind not in (KIND_INSTANCE, KIND_CLASS):
        raise ValueError(f"kind must be {KIND_INSTANCE} (instance) or {KIND_CLASS} (class), got {kind!r}")
    if index < 0 or concept < 0 or prompt_id < 0:
        raise ValueError(f"index, concept and prompt_id must be >= 0, got {index}, {concept}, {prompt_id}")
    feature = {
        PROMPT_ID: _ints([prompt_id]),
        KIND: _ints([kind]),
        CONCEPT: _ints([concept]),
        INDEX: _ints([index]),
        SOURCE: _bytes([str(source).encode("utf-8")]),
    }
    if image is not None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        feature[IMAGE] = _bytes([images.encode_png(image)])
    else:
        mean, logvar = latents
        shape = np.shape(mean)
        feature[LATENT_MEAN] = _float_bytes(mean, "latent mean", shape)
        feature[LATENT_LOGVAR] = _float_bytes(logvar, "latent logvar", shape)
        if flipped_latents is not None:
            feature[LATENT_MEAN_FLIPPED] = _float_bytes(flipped_latents[0], "flipped latent mean", shape)
            feature[LATENT_LOGVAR_FLIPPED] = _float_bytes(flipped_latents[1], "flipped latent logvar", shape)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(layout: RecordLayout):
    """The `tf.io.parse_single_example` spec of an example record of `layout`; every feature is required."""
    spec = {
        PROMPT_ID: tf.io.FixedLenFeature([], tf.int64),
        KIND: tf.io.FixedLenFeature([], tf.int64),
        CONCEPT: tf.io.FixedLenFeature([], tf.int64),
        INDEX: tf.io.FixedLenFeature([], tf.int64),
        SOURCE: tf.io.FixedLenFeature([], tf.string),
    }
    if layout.record_format == PIXELS:
        spec[IMAGE] = tf.io.FixedLenFeature([], tf.string)
    else:
        names = [LATENT_MEAN, LATENT_LOGVAR] + ([LATENT_MEAN_FLIPPED, LATENT_LOGVAR_FLIPPED] if layout.flipped_latents else [])
        spec.update({name: tf.io.FixedLenFeature([], tf.string) for name in names})
    return spec


def prompt_feature_spec(layout: RecordLayout):
    """The parse spec of a prompt-table record of `layout`; every feature is required."""
    return {
        PROMPT_ID: tf.io.FixedLenFeature([], tf.int64),
        PROMPT: tf.io.FixedLenFeature([], tf.string),
        TOKEN_IDS: tf.io.FixedLenFeature([layout.max_length], tf.int64),
        EMBEDDING: tf.io.FixedLenFeature([], tf.string),
    }


def to_pixels(image_uint8):
    """uint8 images to float32 in [-1, 1], the range the VAE was trained on."""
    return tf.cast(image_uint8, tf.float32) / 127.5 - 1.0


def _floats(raw, shape, name):
    values = tf.io.decode_raw(raw, tf.float32, little_endian=True)
    size = int(np.prod(shape))
    tf.debugging.assert_equal(tf.size(values), size, message=f"{name}: expected {size} float32 values {shape}")
    return tf.reshape(tf.ensure_shape(values, [size]), shape)


def decode_prompts(serialized, layout: RecordLayout):
    """Prompt-table records (a 1-D batch of them) as batched tensors: "prompt_id", "prompt",
    "token_ids" (N, max_length) int32 and "embedding" (N, max_length, width) float32.
    An embedding of the wrong size fails with the sizes it had and the ones expected."""
    raw = tf.io.parse_example(serialized, prompt_feature_spec(layout))
    size = int(np.prod(layout.embedding_shape))
    values = tf.io.decode_raw(raw[EMBEDDING], tf.float32, little_endian=True)  # fails on unequal sizes
    tf.debugging.assert_equal(tf.shape(values)[1], size, message=(
        f"text_embedding: expected {size} float32 values {layout.embedding_shape}"))
    return {
        "prompt_id": raw[PROMPT_ID],
        "prompt": raw[PROMPT],
        "token_ids": tf.cast(raw[TOKEN_IDS], tf.int32),
        "embedding": tf.reshape(values, (-1,) + layout.embedding_shape),
    }


def decode_example(serialized, layout: RecordLayout):
    """Every field of one example record, as tensors; works eagerly and inside tf.data.map.

    Returns "prompt_id", "source", "kind", "index", "concept", and "image" (uint8
    (H, W, 3), shorter side == resolution) for pixel records or "latent_mean"/
    "latent_logvar" (+ "_flipped") for latent records. A record of the wrong size
    fails with the shapes it had and the ones expected. The prompt, token ids and
    embedding are the prompt table's row "prompt_id".
    """
    raw = tf.io.parse_single_example(serialized, feature_spec(layout))
    example = {
        "prompt_id": tf.cast(raw[PROMPT_ID], tf.int32),
        "source": raw[SOURCE],
        "kind": tf.cast(raw[KIND], tf.int32),
        "index": tf.cast(raw[INDEX], tf.int32),
        "concept": tf.cast(raw[CONCEPT], tf.int32),
    }
    if layout.record_format == PIXELS:
        image = tf.io.decode_png(raw[IMAGE], channels=3)
        shorter = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
        tf.debugging.assert_equal(shorter, layout.resolution,
                                  message=f"image: expected the shorter side to be {layout.resolution} px")
        example["image"] = image
    else:
        for key in (LATENT_MEAN, LATENT_LOGVAR) + ((LATENT_MEAN_FLIPPED, LATENT_LOGVAR_FLIPPED) if layout.flipped_latents else ()):
            example[key] = _floats(raw[key], layout.latent_shape, key)
    return example


def center_crop(image, resolution):
    """The centred (resolution, resolution) square of an image whose shorter side is `resolution`."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return tf.ensure_shape(image[top:top + resolution, left:left + resolution], [resolution, resolution, 3])
