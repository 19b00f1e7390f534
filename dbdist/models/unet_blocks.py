"""The UNet's building blocks, in keras-cv's weight layout.

keras-cv's `.h5` files are loaded by layer order, and inside each layer by the
order in which sub-layers were assigned. Each block below therefore creates its
sub-layers in exactly keras-cv's order (noted per class); the names are ours.
"""

import keras
from keras import ops

from dbdist.models.attention import attend
from dbdist.models.composite_layer import CompositeLayer


def _group_norm(groups, epsilon=1e-5):
    return keras.layers.GroupNormalization(groups=groups, epsilon=epsilon)


class ResBlock(CompositeLayer):
    """GroupNorm-swish-conv twice, with the timestep embedding added between.

    Weight order: norm1, conv1, time_proj, norm2, conv2, [shortcut].
    """

    def __init__(self, channels, norm_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_groups = norm_groups
        self.norm1 = _group_norm(norm_groups)
        self.conv1 = keras.layers.Conv2D(channels, 3, padding="same")
        self.time_proj = keras.layers.Dense(channels)
        self.norm2 = _group_norm(norm_groups)
        self.conv2 = keras.layers.Conv2D(channels, 3, padding="same")
        self.shortcut = None

    def build(self, input_shape):
        x_shape, _ = input_shape
        # A 1x1 projection only where the width changes, as in SD.
        if x_shape[-1] != self.channels:
            self.shortcut = keras.layers.Conv2D(self.channels, 1)

    def call(self, inputs):
        x, time_embedding = inputs
        h = self.conv1(ops.silu(self.norm1(x)))
        h = h + self.time_proj(ops.silu(time_embedding))[:, None, None, :]
        h = self.conv2(ops.silu(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "norm_groups": self.norm_groups}


class CrossAttention(CompositeLayer):
    """Self-attention (context=None) or attention over the text context.

    Weight order: to_q, to_k, to_v (no bias), out_proj.
    """

    def __init__(self, num_heads, head_size, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_size = head_size
        width = num_heads * head_size
        self.to_q = keras.layers.Dense(width, use_bias=False)
        self.to_k = keras.layers.Dense(width, use_bias=False)
        self.to_v = keras.layers.Dense(width, use_bias=False)
        self.out_proj = keras.layers.Dense(width)

    def call(self, x, context=None):
        context = x if context is None else context
        out = attend(self.to_q(x), self.to_k(context), self.to_v(context), self.num_heads)
        return self.out_proj(out)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_size": self.head_size}


class GEGLU(CompositeLayer):
    """Gated GELU feed-forward input: x * gelu(gate), one Dense for both halves.

    keras-cv (and so its weights' reference outputs) uses GELU's tanh form; SD's own
    code and diffusers the exact one (`approximate=False`, for weights imported from them).
    """

    def __init__(self, output_dim, approximate=True, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.approximate = approximate
        self.dense = keras.layers.Dense(output_dim * 2)

    def call(self, x):
        x, gate = ops.split(self.dense(x), 2, axis=-1)
        return x * ops.gelu(gate, approximate=self.approximate)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim, "approximate": self.approximate}


class TransformerBlock(CompositeLayer):
    """Self-attention, cross-attention, GEGLU feed-forward; pre-norm residuals.

    Weight order: norm1, attn1, norm2, attn2, norm3, geglu, dense.
    """

    def __init__(self, num_heads, head_size, gelu_approximate=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_size = head_size
        self.gelu_approximate = gelu_approximate
        width = num_heads * head_size
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attn1 = CrossAttention(num_heads, head_size)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attn2 = CrossAttention(num_heads, head_size)
        self.norm3 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.geglu = GEGLU(width * 4, approximate=gelu_approximate)
        self.dense = keras.layers.Dense(width)

    def call(self, inputs):
        x, context = inputs
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.dense(self.geglu(self.norm3(x))) + x

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_size": self.head_size,
                "gelu_approximate": self.gelu_approximate}


class SpatialTransformer(CompositeLayer):
    """Flattens the feature map into tokens, runs one TransformerBlock, restores it.

    SD 1.x projects in/out with 1x1 convolutions, SD 2.x with Dense layers
    (`linear_projection`); both act on the channel axis only.
    Weight order: norm, proj_in, transformer_block, proj_out.
    """

    def __init__(self, num_heads, head_size, linear_projection=False, norm_groups=32, norm_epsilon=1e-5,
                 gelu_approximate=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_size = head_size
        self.linear_projection = linear_projection
        self.norm_groups = norm_groups
        self.norm_epsilon = norm_epsilon
        self.gelu_approximate = gelu_approximate
        width = num_heads * head_size

        def projection():
            return keras.layers.Dense(width) if linear_projection else keras.layers.Conv2D(width, 1)

        self.norm = _group_norm(norm_groups, norm_epsilon)
        self.proj_in = projection()
        self.transformer_block = TransformerBlock(num_heads, head_size, gelu_approximate=gelu_approximate)
        self.proj_out = projection()

    def call(self, inputs):
        x, context = inputs
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        channels = x.shape[-1]
        h = self.proj_in(self.norm(x))
        h = ops.reshape(h, (batch, height * width, channels))
        h = self.transformer_block([h, context])
        h = ops.reshape(h, (batch, height, width, channels))
        return self.proj_out(h) + x

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "head_size": self.head_size,
            "linear_projection": self.linear_projection,
            "norm_groups": self.norm_groups,
            "norm_epsilon": self.norm_epsilon,
            "gelu_approximate": self.gelu_approximate,
        }


class Upsample(CompositeLayer):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.upsample = keras.layers.UpSampling2D(2)
        self.conv = keras.layers.Conv2D(channels, 3, padding="same")

    def call(self, x):
        return self.conv(self.upsample(x))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
