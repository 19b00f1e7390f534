"""The VAE's building blocks, in keras-cv's weight layout (see unet_blocks.py)."""

import keras
from keras import ops

from dbdist.models.attention import attend
from dbdist.models.composite_layer import CompositeLayer


class VAEResBlock(CompositeLayer):
    """GroupNorm-swish-conv twice with a residual; no timestep input.

    Weight order: norm1, conv1, norm2, conv2, [shortcut].
    """

    def __init__(self, channels, norm_groups=32, norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_groups = norm_groups
        self.norm_epsilon = norm_epsilon
        self.norm1 = keras.layers.GroupNormalization(groups=norm_groups, epsilon=norm_epsilon)
        self.conv1 = keras.layers.Conv2D(channels, 3, padding="same")
        self.norm2 = keras.layers.GroupNormalization(groups=norm_groups, epsilon=norm_epsilon)
        self.conv2 = keras.layers.Conv2D(channels, 3, padding="same")
        self.shortcut = None

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            self.shortcut = keras.layers.Conv2D(self.channels, 1)

    def call(self, x):
        h = self.conv1(ops.silu(self.norm1(x)))
        h = self.conv2(ops.silu(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "norm_groups": self.norm_groups,
                "norm_epsilon": self.norm_epsilon}


class VAEAttention(CompositeLayer):
    """Single-head self-attention over all pixels (the VAE's middle block).

    Weight order: norm, q, k, v, proj_out (all 1x1 convolutions).
    """

    def __init__(self, channels, norm_groups=32, norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_groups = norm_groups
        self.norm_epsilon = norm_epsilon
        self.norm = keras.layers.GroupNormalization(groups=norm_groups, epsilon=norm_epsilon)
        self.q = keras.layers.Conv2D(channels, 1)
        self.k = keras.layers.Conv2D(channels, 1)
        self.v = keras.layers.Conv2D(channels, 1)
        self.proj_out = keras.layers.Conv2D(channels, 1)

    def call(self, x):
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        h = self.norm(x)

        def tokens(t):
            return ops.reshape(t, (batch, height * width, self.channels))

        out = attend(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)), num_heads=1)
        out = ops.reshape(out, (batch, height, width, self.channels))
        return self.proj_out(out) + x

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "norm_groups": self.norm_groups,
                "norm_epsilon": self.norm_epsilon}
