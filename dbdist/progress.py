"""The progress line of long non-training work (drawing images, making records): done/total, img/s, ETA."""

import time

from absl import logging

from dbdist.training.metrics_log import format_duration


class Progress:
    """Call with the number just finished; logs `<label> done/total  x img/s  ETA h:mm:ss`
    at most every `every_s` seconds, and always when the work is complete."""

    def __init__(self, total, label="images", every_s=10.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def __call__(self, count):
        self.done += count
        now = time.perf_counter() - self.start
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now, 1e-9)
            logging.info("%s %d/%d  %.2f img/s  ETA %s", self.label, self.done, self.total, rate,
                         format_duration((self.total - self.done) / max(rate, 1e-9)))
