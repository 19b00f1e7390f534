"""Base class for layers made only of other layers."""

import keras


class CompositeLayer(keras.layers.Layer):
    """A layer whose variables all live in sub-layers, which build on first call.

    Without a `build` of its own, Keras traces `call` once just to create the
    sub-layers' variables, and then again for the output: once more per level
    of nesting, which made even the tiny UNet take 15 s to build.
    """

    def build(self, input_shape):
        self.built = True
