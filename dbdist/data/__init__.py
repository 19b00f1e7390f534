"""The data layer: image files in, TFRecord shards plus a manifest out, tf.data batches back.

`images` reads and writes pictures, `features` is the one TFRecord feature spec,
`writer` and `manifest` lay a data directory down atomically, and `reader` turns
it into the replica-independent training stream.
"""
