"""SIGTERM (TPU/VM preemption, `docker stop`): checkpoint at the next loop boundary, then exit non-zero."""

import signal

from absl import logging

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a supervisor expects from a terminated job


class Preempted(SystemExit):
    def __init__(self, step):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


class PreemptionWatcher:
    """Remembers that SIGTERM arrived; the loop polls `requested` between inner loops."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no signal handling
            logging.warning("SIGTERM handler not installed (not on the main thread)")

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the end of this loop, then exiting")
        self.requested = True
