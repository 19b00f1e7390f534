"""TensorBoard scalars and validation images (the chief only writes them)."""

import os

import numpy as np
import tensorflow as tf

from dbdist.data import images

SCALARS = (
    "loss", "instance_loss", "prior_loss", "learning_rate", "text_encoder_learning_rate", "grad_norm", "images_per_sec",
)


class Summaries:
    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))

    def scalars(self, record):
        with self.writer.as_default(step=record["step"]):
            for name in SCALARS:
                if name in record:
                    tf.summary.scalar(name, record[name])
        self.writer.flush()

    def validation_images(self, step, prompt, pictures):
        """Writes validation/step-000100.png (a grid) and the images to TensorBoard."""
        grid = images.make_grid(pictures, columns=len(pictures))
        images.save_png(grid, os.path.join(self.output_dir, "validation", f"step-{step:06d}.png"))
        with self.writer.as_default(step=step):
            tf.summary.image(f"validation/{prompt}", np.stack(pictures), max_outputs=len(pictures))
        self.writer.flush()
