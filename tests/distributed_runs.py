"""Helpers to run `python -m dbdist.train` in fresh processes (strategies need a fresh TensorFlow).

Timeouts only catch hangs: a 2-core machine shared with other work can take minutes per run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from dbdist.weights.keras_cv_h5 import read_layer_arrays

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train_argv(**flags):
    return [sys.executable, "-m", "dbdist.train"] + [f"--{k}={v}" for k, v in flags.items()]


def start_train(log_path, tf_config=None, extra_env=None, **flags):
    """Starts `python -m dbdist.train` with `flags`, its output in `log_path`; `extra_env` adds variables."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(log_path, "w")
    return subprocess.Popen(train_argv(**flags), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def run_train(log_path, timeout=1800, **flags):
    wait_train(start_train(log_path, **flags), log_path, timeout)


def wait_train(process, log_path, timeout=1800):
    code = process.wait(timeout=timeout)
    assert code == 0, f"train exited {code}:\n{pathlib.Path(log_path).read_text()[-4000:]}"


def assert_ran_with(log_path, strategy, replicas):
    """The replica count that actually ran (train logs it once the strategy exists)."""
    expected = f"strategy {strategy} with {replicas} replica(s)"
    assert expected in pathlib.Path(log_path).read_text(), f"{log_path} does not say {expected!r}"


def vertex_tf_config(addresses, index, job=None):
    """The TF_CONFIG Vertex AI sets on replica `index` of a multi-replica job whose replicas listen
    on `addresses`, in worker-pool order: replica 0 is worker pool 0's only replica, the chief;
    the others are pool 1's workers, numbered from 0. Vertex adds "job" (the job's spec) and
    "environment": "cloud", which TensorFlow ignores. Tests feed it to local processes."""
    addresses = list(addresses)
    cluster = {"chief": addresses[:1]}
    if len(addresses) > 1:
        cluster["worker"] = addresses[1:]
    task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
    return {"cluster": cluster, "task": task, "job": job or {}, "environment": "cloud"}


def hand_made_tf_config(addresses, index):
    """The README's cluster: every process a "worker"; worker 0 is the chief."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def run_multi_worker(log_dir, workers=2, timeout=1800, tf_config=hand_made_tf_config, **flags):
    """All workers of a local cluster on 127.0.0.1 with the same flags. `tf_config(addresses, i)` is
    process i's TF_CONFIG (e.g. vertex_tf_config, where process 0 is the "chief")."""
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    processes = [
        start_train(pathlib.Path(log_dir) / f"worker-{i}.log", tf_config(addresses, i), **flags)
        for i in range(workers)
    ]
    codes = [p.wait(timeout=timeout) for p in processes]
    logs = "\n".join(pathlib.Path(log_dir, f"worker-{i}.log").read_text()[-3000:] for i in range(workers))
    assert codes == [0] * workers, f"workers exited {codes}:\n{logs}"


def exported_arrays(run_dir, name="unet.h5"):
    return [a for _, arrays in read_layer_arrays(pathlib.Path(run_dir) / "export" / name) for a in arrays]


def max_weight_difference(run_a, run_b):
    a, b = exported_arrays(run_a), exported_arrays(run_b)
    assert len(a) == len(b) > 0
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def metrics(run_dir):
    lines = (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
