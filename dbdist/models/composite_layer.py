"""Base class for layers made only of other layers."""

import contextlib

import keras


class CompositeLayer(keras.layers.Layer):
    """A layer whose variables all live in sub-layers, which build on first call.

    Without a `build` of its own, Keras traces `call` once just to create the
    sub-layers' variables, and then again for the output: once more per level
    of nesting, which made even the tiny UNet take 15 s to build.

    `gradient_checkpointing=True` rematerialises this layer as a whole (keras.RematScope:
    the backward pass recomputes its activations instead of keeping them). Keras reads the
    scope when a layer is constructed, so it is active only while this layer is, not while
    its sub-layers are: they are recomputed once, as part of this layer, not again on their own.
    """

    def __init__(self, gradient_checkpointing=False, **kwargs):
        scope = keras.RematScope(mode="full") if gradient_checkpointing else contextlib.nullcontext()
        with scope:
            super().__init__(**kwargs)

    def build(self, input_shape):
        self.built = True
