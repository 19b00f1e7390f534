"""python -m launch.stages: make the records, then train, on every machine of a cloud run.

What a launcher runs remotely when it is given --make_tfrecords (over ssh on a TPU VM; in the
Vertex AI container instead of the image's `python -m dbdist.train`):

    python -m launch.stages <make_tfrecords flags> -- <train flags, including --data_dir>

1. Records, unless `<data_dir>/manifest.json` exists. make_tfrecords writes the manifest last,
   so its presence means complete records: a relaunch after preemption does not make them again
   (delete the folder to rebuild them). Every task runs make_tfrecords; under
   --strategy=multi_worker they all draw class images and the chief writes the records.
2. Every task waits for the manifest (other workers finish make_tfrecords before the chief).
3. The process becomes `python -m dbdist.train` (exec), so a preemption's SIGTERM reaches the
   trainer directly and the trainer's exit code (143 when preempted) is the task's.
"""

import os
import signal
import subprocess
import sys
import time

RECORDS_WAIT_SECONDS = 4 * 3600  # the chief encodes every image after the others are done
_POLL_SECONDS = 10


def split_stages(argv):
    """`<make_tfrecords flags> -- <train flags>` -> the two lists."""
    if "--" not in argv:
        raise SystemExit("usage: python -m launch.stages <make_tfrecords flags> -- <train flags>")
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def flag_value(args, name):
    """The last value of --name in `args` (`--name=value` or `--name value`), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def _exists(path):
    import tensorflow as tf  # gs:// and local paths alike; only needed once the stages run

    return tf.io.gfile.exists(path)


def _run_forwarding_sigterm(argv):
    """Runs a stage; SIGTERM (preemption) is passed on to it. Returns its exit code (143 if terminated)."""
    child = subprocess.Popen(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code


def wait_for(path, timeout=RECORDS_WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not _exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout} s: did make_tfrecords fail on the chief?")
        time.sleep(_POLL_SECONDS)


def main(argv):
    records_args, train_args = split_stages(argv)
    data_dir = flag_value(train_args, "data_dir")
    if not data_dir:
        raise SystemExit("launch.stages needs --data_dir in the train flags (the launchers add it)")
    from dbdist.data.manifest import MANIFEST_NAME  # loads TensorFlow, as _exists does

    manifest = f"{data_dir.rstrip('/')}/{MANIFEST_NAME}"
    if _exists(manifest):
        print(f"[stages] {manifest} exists: the records are complete, not making them again "
              "(delete the folder to rebuild them)", flush=True)
    else:
        code = _run_forwarding_sigterm([sys.executable, "-m", "dbdist.make_tfrecords", *records_args])
        if code:
            return code
        wait_for(manifest)
    train = [sys.executable, "-m", "dbdist.train", *train_args]
    sys.stdout.flush()
    os.execv(sys.executable, train)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
