"""Multi-worker engine defects of issue 9, with 2 local worker processes (fresh TensorFlow each)."""

import pathlib
import re
import signal
import time

import pytest
from distributed_runs import free_ports, hand_made_tf_config, run_multi_worker, start_train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

FLAGS = dict(model="tiny", strategy="multi_worker", global_batch_size=2, log_every=1, learning_rate=1e-4, seed=0)


def test_multi_worker_with_validation_images(records_dir, vocab_path, tmp_path):
    # Only the chief samples: built inside the strategy's scope, its networks' variables were
    # collectives the other worker never joined, and both stopped before step 1.
    run_multi_worker(
        tmp_path, data_dir=records_dir, output_dir=tmp_path / "run", max_train_steps=2, checkpoint_every=2,
        validation_every=2, validation_prompt="a photo of sks ball", vocab_path=vocab_path, **FLAGS,
    )
    assert (tmp_path / "run" / "validation" / "step-000002.png").exists()


def _wait_for_first_checkpoint(out, processes, timeout=600):
    deadline = time.monotonic() + timeout
    while not (out / "checkpoints" / "checkpoint").exists():  # written last: a checkpoint is complete
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a worker ended ({[p.poll() for p in processes]}) before the first checkpoint")
        if time.monotonic() > deadline:
            pytest.fail("no checkpoint appeared")
        time.sleep(0.02)


def test_a_lost_worker_stops_the_other_with_a_plain_message(records_dir, tmp_path):
    out = tmp_path / "run"
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [
        start_train(logs[i], hand_made_tf_config(addresses, i), data_dir=records_dir, output_dir=out,
                    max_train_steps=100000, checkpoint_every=2, **FLAGS)
        for i in range(2)
    ]
    try:
        _wait_for_first_checkpoint(out, workers)
        workers[1].send_signal(signal.SIGKILL)
        code = workers[0].wait(timeout=300)  # a chief waiting forever on its dead peer fails here
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    log = logs[0].read_text()
    assert code != 0, log[-3000:]
    last_line = log.strip().splitlines()[-1]
    found = re.fullmatch(
        r"lost task worker:1 of the multi_worker cluster \(\w+Error.*\); the last checkpoint is at step (\d+)\. "
        r"Rerun the same command on every worker to resume\.", last_line,
    )
    assert found, last_line
    newest = sorted(int(p.name.split("-")[1].split(".")[0]) for p in pathlib.Path(out, "checkpoints").glob("ckpt-*.index"))
    assert int(found[1]) == newest[-1] >= 2
