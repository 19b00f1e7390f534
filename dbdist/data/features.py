"""The one TFRecord feature spec: imported by the writer, the reader and tfrecords_tools/.

One record is one training example: the already cropped and resized RGB image
(PNG, lossless), its prompt, token ids and cached text embedding, and which stream
(instance or class) it belongs to.
"""

import numpy as np
import tensorflow as tf

from dbdist.data import images

# Record feature keys.
IMAGE = "image"              # PNG bytes of the cropped/resized RGB uint8 image
PROMPT = "prompt"            # utf-8 bytes
TOKEN_IDS = "token_ids"      # int64 list of length max_length
EMBEDDING = "text_embedding"  # raw little-endian float32 bytes of a (max_length, width) array
KIND = "kind"                # int64: KIND_INSTANCE or KIND_CLASS
CONCEPT = "concept"          # int64, 0 until multi-concept training exists
INDEX = "index"              # int64, position of the example within its kind
SOURCE = "source"            # bytes: base name of the source image file

KIND_INSTANCE = 0
KIND_CLASS = 1
KIND_NAMES = ("instance", "class")

# Keys of the flat training batch the reader yields.
INSTANCE_PIXELS = "instance_pixels"
INSTANCE_EMBEDDING = "instance_embedding"
INSTANCE_TOKEN_IDS = "instance_token_ids"
CLASS_PIXELS = "class_pixels"
CLASS_EMBEDDING = "class_embedding"
CLASS_TOKEN_IDS = "class_token_ids"
# int32 position of each example within the global batch (0..G-1); keys per-example randomness.
EXAMPLE_POSITION = "position"


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def serialize_example(*, image, prompt, token_ids, embedding, kind, index, source, concept=0):
    """One serialized tf.train.Example; `image` uint8 (H, W, 3), `embedding` float32 (L, width)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    embedding = np.asarray(embedding)
    if embedding.dtype != np.float32 or embedding.ndim != 2:
        raise ValueError(f"embedding must be float32 (max_length, width), "
                         f"got {embedding.dtype} {embedding.shape}")
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or token_ids.shape[0] != embedding.shape[0] \
            or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"token_ids must be integers of shape ({embedding.shape[0]},) to match the "
                         f"embedding, got {token_ids.dtype} {token_ids.shape}")
    if kind not in (KIND_INSTANCE, KIND_CLASS):
        raise ValueError(f"kind must be {KIND_INSTANCE} (instance) or {KIND_CLASS} (class), got {kind!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    feature = {
        IMAGE: _bytes([images.encode_png(image)]),
        PROMPT: _bytes([prompt.encode("utf-8")]),
        TOKEN_IDS: _ints(token_ids),
        EMBEDDING: _bytes([embedding.astype("<f4").tobytes()]),
        KIND: _ints([kind]),
        CONCEPT: _ints([concept]),
        INDEX: _ints([index]),
        SOURCE: _bytes([str(source).encode("utf-8")]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(max_length):
    """The `tf.io.parse_single_example` spec; every feature is required."""
    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        PROMPT: tf.io.FixedLenFeature([], tf.string),
        TOKEN_IDS: tf.io.FixedLenFeature([max_length], tf.int64),
        EMBEDDING: tf.io.FixedLenFeature([], tf.string),
        KIND: tf.io.FixedLenFeature([], tf.int64),
        CONCEPT: tf.io.FixedLenFeature([], tf.int64),
        INDEX: tf.io.FixedLenFeature([], tf.int64),
        SOURCE: tf.io.FixedLenFeature([], tf.string),
    }


def to_pixels(image_uint8):
    """uint8 images to float32 in [-1, 1], the range the VAE was trained on."""
    return tf.cast(image_uint8, tf.float32) / 127.5 - 1.0


def decode_example(serialized, *, resolution, embedding_shape):
    """Every field of one record, image kept as uint8; max_length is embedding_shape[0].

    Returns {"image", "prompt", "source", "embedding", "token_ids", "kind", "index", "concept"}.
    Works eagerly and inside tf.data.map. A record of the wrong size fails with the
    shapes it had and the ones expected.
    """
    max_length, width = (int(d) for d in embedding_shape)
    raw = tf.io.parse_single_example(serialized, feature_spec(max_length))
    image = tf.io.decode_png(raw[IMAGE], channels=3)
    image = tf.ensure_shape(image, [resolution, resolution, 3])
    embedding = tf.io.decode_raw(raw[EMBEDDING], tf.float32, little_endian=True)
    embedding = tf.reshape(tf.ensure_shape(embedding, [max_length * width]), [max_length, width])
    return {
        "image": image,
        "prompt": raw[PROMPT],
        "source": raw[SOURCE],
        "embedding": embedding,
        "token_ids": tf.cast(raw[TOKEN_IDS], tf.int32),
        "kind": tf.cast(raw[KIND], tf.int32),
        "index": tf.cast(raw[INDEX], tf.int32),
        "concept": tf.cast(raw[CONCEPT], tf.int32),
    }


def parse_example(serialized, *, resolution, embedding_shape):
    """One record as training tensors: pixels float32 (res, res, 3) in [-1, 1] and the rest.

    Returns {"pixels", "embedding", "token_ids", "kind", "index", "concept"} (int32 ids).
    """
    example = decode_example(serialized, resolution=resolution, embedding_shape=embedding_shape)
    return {
        "pixels": to_pixels(example["image"]),
        **{k: example[k] for k in ("embedding", "token_ids", "kind", "index", "concept")},
    }
