"""A worker of a multi_worker run died: the others stop with a plain message, not TensorFlow's.

When a peer process dies, the collective the survivors are waiting in fails (measured with a
kill -9 of either of 2 local workers: UnavailableError "Collective ops is aborted by:
recvmsg:Connection reset by peer ... from remote target /job:worker/replica:0/task:1 ...
[[{{node while/CollectiveReduceV2}}]]", about 20 s later).
"""

import contextlib
import re

import tensorflow as tf

# The error kinds an aborted collective raises; only those naming a collective op are a lost peer
# (an UnavailableError can also come from reading gs://).
_COLLECTIVE_FAILURES = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError, tf.errors.InternalError,
)
# How the lost task is named: the peer a call failed on, or the coordination service's
# "The following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1".
_LOST_TASK = re.compile(r"(?:remote target |stopped sending heartbeats\):\s*)/job:(\w+)/replica:\d+/task:(\d+)")
_CAUSE = re.compile(r"aborted by: ([^\n]+)")


class LostWorker(SystemExit):
    """Exits non-zero with one line: which task was lost, the last checkpoint, how to resume."""


def describe(err, last_checkpoint_step):
    task = _LOST_TASK.search(err.message)
    lost = f"task {task[1]}:{task[2]}" if task else "a peer worker"
    cause = _CAUSE.search(err.message)
    checkpoint = (
        f"the last checkpoint is at step {last_checkpoint_step}" if last_checkpoint_step is not None
        else "there is no checkpoint yet"
    )
    return (
        f"lost {lost} of the multi_worker cluster ({type(err).__name__}{': ' + cause[1] if cause else ''}); {checkpoint}. "
        "Rerun the same command on every worker to resume."
    )


@contextlib.contextmanager
def reported(strategy, last_checkpoint_step):
    """Turns a collective's failure under MultiWorkerMirroredStrategy into LostWorker.

    `last_checkpoint_step()` is asked at the failure (None: no checkpoint yet).
    """
    try:
        yield
    except _COLLECTIVE_FAILURES as err:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or "ollective" not in err.message:
            raise
        raise LostWorker(describe(err, last_checkpoint_step())) from err
