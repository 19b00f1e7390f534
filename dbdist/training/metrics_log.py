"""What people watch during training: a progress line and metrics.jsonl (chief only)."""

import json
import os

import tensorflow as tf
from absl import logging


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLog:
    """Appends one JSON object per logged step and prints step, loss, img/s and ETA."""

    def __init__(self, output_dir, max_steps, images_per_step):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.max_steps = max_steps
        self.images_per_step = images_per_step

    def log(self, step, metrics, seconds_per_step):
        """`seconds_per_step`: wall time of the loop that ran this step, over its steps."""
        images_per_sec = self.images_per_step / max(seconds_per_step, 1e-9)
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}, "images_per_sec": images_per_sec}
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        eta = (self.max_steps - step) * seconds_per_step
        logging.info(
            "step %d/%d  loss %.4f (instance %.4f, prior %.4f)  lr %.3g  %.2f img/s  ETA %s",
            step,
            self.max_steps,
            record["loss"],
            record["instance_loss"],
            record["prior_loss"],
            record["learning_rate"],
            images_per_sec,
            format_duration(eta),
        )
        return record


def read_metrics(path):
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]
