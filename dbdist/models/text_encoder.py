"""CLIP text tower: token ids -> per-token embeddings (the UNet's context).

`sd-v1` is OpenAI CLIP ViT-L/14's text tower (12 layers, width 768, quick-GELU);
`sd-v2` is OpenCLIP ViT-H/14's, cut before its last layer as SD 2.x uses it
(23 layers, width 1024, GELU), both as keras-cv builds them and in keras-cv's
weight layout. Positions are implied (0..L-1), so the model takes only ids.
"""

import keras
from keras import ops

from dbdist.config import TextEncoderConfig
from dbdist.models.attention import attend
from dbdist.models.composite_layer import CompositeLayer


def quick_gelu(x):
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * ops.sigmoid(1.702 * x)


def tanh_gelu(x):
    # keras-cv's TextEncoderV2 uses GELU's tanh form; its outputs are the reference.
    return ops.gelu(x, approximate=True)


def erf_gelu(x):
    # OpenCLIP's nn.GELU() and transformers' "gelu": what SD 2.x's text encoder was trained with.
    return ops.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": tanh_gelu, "gelu_erf": erf_gelu}


class TokenAndPositionEmbedding(CompositeLayer):
    """Weight order: token embedding, position embedding."""

    def __init__(self, vocab_size, max_length, width, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.width = width
        self.token_embedding = keras.layers.Embedding(vocab_size, width)
        self.position_embedding = keras.layers.Embedding(max_length, width)

    def call(self, token_ids):
        positions = ops.arange(ops.shape(token_ids)[1])
        return self.token_embedding(token_ids) + self.position_embedding(positions)[None]

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "width": self.width,
        }


class CausalSelfAttention(CompositeLayer):
    """Weight order: q_proj, k_proj, v_proj, out_proj (all with bias)."""

    def __init__(self, width, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.num_heads = num_heads
        self.q_proj = keras.layers.Dense(width)
        self.k_proj = keras.layers.Dense(width)
        self.v_proj = keras.layers.Dense(width)
        self.out_proj = keras.layers.Dense(width)

    def call(self, x):
        out = attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, causal=True)
        return self.out_proj(out)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "num_heads": self.num_heads}


class EncoderLayer(CompositeLayer):
    """Pre-norm transformer layer. Weight order: norm1, attention, norm2, fc1, fc2."""

    def __init__(self, width, num_heads, activation="quick_gelu", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"text encoder activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.width = width
        self.num_heads = num_heads
        self.activation = activation
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attention = CausalSelfAttention(width, num_heads)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.fc1 = keras.layers.Dense(width * 4)
        self.fc2 = keras.layers.Dense(width)

    def call(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(ACTIVATIONS[self.activation](self.fc1(self.norm2(x))))

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "num_heads": self.num_heads,
            "activation": self.activation,
        }


def build_text_encoder(config: TextEncoderConfig, name="text_encoder"):
    """token ids (B, max_length) int32 -> embeddings (B, max_length, width)."""
    if config.width % config.num_heads:
        raise ValueError(f"text encoder width {config.width} cannot split into {config.num_heads} heads")
    tokens = keras.Input((config.max_length,), dtype="int32", name="tokens")
    x = TokenAndPositionEmbedding(config.vocab_size, config.max_length, config.width)(tokens)
    for _ in range(config.num_layers):
        x = EncoderLayer(config.width, config.num_heads, config.activation)(x)
    embeddings = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(tokens, embeddings, name=name)


def train_only_token_embedding(text_encoder):
    """Freezes all of `text_encoder` but its token embedding table, and returns that variable.

    With `token_row_mask` on its gradient, only chosen rows then train (pivotal tuning): the
    transformer, the position embedding and every other word stay as they were.
    """
    tables = [layer.token_embedding for layer in text_encoder.layers if isinstance(layer, TokenAndPositionEmbedding)]
    if len(tables) != 1:
        raise ValueError(f"{text_encoder.name} has {len(tables)} token embeddings; expected one")
    for layer in text_encoder.layers:
        layer.trainable = False
    tables[0].trainable = True
    return tables[0].embeddings


def token_row_mask(vocab_size, token_ids):
    """(vocab_size, 1) float32: 1 on the rows of `token_ids`, 0 elsewhere; multiplies the table's gradient.

    A row whose gradient is always 0 gets no Adam update (its moments stay 0); with weight decay
    off for the table (the engines' optimizers do that), it does not move at all.
    """
    rows = ops.arange(vocab_size)[:, None]
    hits = ops.any(ops.equal(rows, ops.convert_to_tensor([list(token_ids)], "int32")), axis=1, keepdims=True)
    return ops.cast(hits, "float32")
