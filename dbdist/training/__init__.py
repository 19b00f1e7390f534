"""The TensorFlow training engine: per-replica maths, optimizer, loop."""
