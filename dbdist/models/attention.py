"""Multi-head attention maths shared by the UNet, VAE and text encoder.

`keras.ops.dot_product_attention` lets each backend pick its fused kernel
(cuDNN flash attention under JAX on a GPU); the layers around it only project
and reshape.
"""

from keras import ops


def split_heads(x, num_heads):
    """(batch, length, heads * size) -> (batch, length, heads, size)."""
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    return ops.reshape(x, (batch, length, num_heads, x.shape[-1] // num_heads))


def merge_heads(x):
    """(batch, length, heads, size) -> (batch, length, heads * size)."""
    batch, length = ops.shape(x)[0], ops.shape(x)[1]
    return ops.reshape(x, (batch, length, x.shape[-2] * x.shape[-1]))


def attend(query, key, value, num_heads, causal=False):
    """Softmax(q k^T / sqrt(head size)) v over `num_heads` heads.

    Inputs are (batch, length, width); the result has the query's shape.
    """
    out = ops.dot_product_attention(
        split_heads(query, num_heads),
        split_heads(key, num_heads),
        split_heads(value, num_heads),
        is_causal=causal,
    )
    return merge_heads(out)
