"""The distributed engine: results independent of the replica count, exact resume, fp16 on all replicas.

Every run is the same command on the tiny preset (6 steps, global batch 2,
2 micro-batches of gradient accumulation, 2 steps per compiled loop,
checkpoints every 2 steps) on different topologies or with interruptions.
Each run is a fresh process (what a topology or a resume is about); most of
its time is TensorFlow's start-up and the trace of the loop, not the steps.

Fast tier (`make test`): one topology check (mirrored on 2 logical CPUs vs one
device) and one exact resume; the rest is marked `slow`.

What the comparisons can see: in these runs the gradient norm (about 6-12)
is always above the clip at 1.0, and Adam ignores a constant factor, so a
gradient scaled by the replica count (a MEAN instead of a SUM over replicas,
summing twice) leaves the weights bit-identical. The per-step `grad_norm`
(logged before clipping) is what shows the scale; the log shows how many
replicas ran.

Tolerances for different replica counts: 2e-6 absolute on the exported
weights. The replicas sum their gradients in another order than one device
sums its batch, so the runs agree to float32 round-off amplified a little by
Adam's normalisation (measured: 3.9e-7 after 8 steps at lr 1e-4), not bit for
bit; losses and grad_norm to relative 1e-5 (float32 sums in another order).
Interrupted-and-resumed runs on the same topology must be bit-identical.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from commands import run_command
from distributed_runs import (
    REPO, assert_ran_with, exported_arrays, max_weight_difference, metrics, run_multi_worker, run_train,
    start_train, wait_train,
)

pytestmark = pytest.mark.distributed

STEPS = 6
FLAGS = dict(
    model="tiny", max_train_steps=STEPS, global_batch_size=2, grad_accum_steps=2, steps_per_loop=2,
    checkpoint_every=2, learning_rate=1e-4, log_every=1, seed=3,
)
TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def mirrored_run(records_dir, tmp_path_factory):
    """The mirrored run, started (not awaited): it runs while the baseline does, on the other core."""
    out = tmp_path_factory.mktemp("mirrored")
    process = start_train(
        out / "train.log", data_dir=records_dir, output_dir=out / "run", strategy="mirrored", num_cpu_devices=2, **FLAGS
    )
    yield process, out
    if process.poll() is None:  # a test failed before waiting for it
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def baseline(records_dir, tmp_path_factory):
    """The uninterrupted one-device run every other run is compared with.

    Every run here is a fresh process, as users run it: repeated runs are then
    bit-identical. (Within one long-lived process, a second trace of the same
    step can differ in the last bit, so the tests do not compare in-process runs.)
    """
    out = tmp_path_factory.mktemp("one_device")
    run_train(out / "train.log", data_dir=records_dir, output_dir=out / "run", strategy="one_device", **FLAGS)
    assert_ran_with(out / "train.log", "one_device", 1)
    return out / "run"


def _same_metrics(run_a, run_b, rtol):
    """Per step: the loss terms and the (unclipped) gradient norm, which shows the gradient's scale."""
    a, b = metrics(run_a), metrics(run_b)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        for key in ("loss", "instance_loss", "prior_loss", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=rtol, abs=1e-7), (x["step"], key, x[key], y[key])


def test_mirrored_on_two_devices_matches_one_device(mirrored_run, baseline):
    process, out = mirrored_run
    wait_train(process, out / "train.log")
    assert_ran_with(out / "train.log", "mirrored", 2)
    difference = max_weight_difference(baseline, out / "run")
    print(f"\n[invariance] mirrored x2 vs one_device: max|dw| = {difference:.3g}")
    assert difference <= TOLERANCE
    _same_metrics(baseline, out / "run", rtol=1e-5)


def _assert_bit_identical(run_a, run_b):
    arrays_a, arrays_b = exported_arrays(run_a), exported_arrays(run_b)
    assert len(arrays_a) == len(arrays_b) > 0
    for a, b in zip(arrays_a, arrays_b):
        assert a.tobytes() == b.tobytes()


def _assert_same_records(run_a, run_b):
    """metrics.jsonl equal to the bit (loss terms, grad_norm, learning_rate), but for the measured speed."""
    records_a, records_b = metrics(run_a), metrics(run_b)
    assert len(records_a) == len(records_b) == STEPS
    assert records_b == [{**a, "images_per_sec": b["images_per_sec"]} for a, b in zip(records_a, records_b)]


def _stopped_after(run_dir, step, out):
    """A copy of `run_dir` as a run stopped right after its checkpoint at `step` leaves it.

    The baseline wrote that checkpoint on its way (a stopped run writes the same
    one), so no process is spent on stopping. Its metrics.jsonl runs past `step`,
    as after a kill: the resumed run must drop those lines and log them again.
    """
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("export", "loss_curve.png", "tensorboard"))
    checkpoints = out / "checkpoints"
    for path in checkpoints.glob("ckpt-*"):
        if int(path.name.split(".")[0].removeprefix("ckpt-")) > step:
            path.unlink()
    # The state file tf.train.latest_checkpoint reads (CheckpointManager writes it after each save).
    (checkpoints / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')
    assert not (out / "export").exists()


def test_stop_then_resume_is_exact(baseline, records_dir, tmp_path):
    out = tmp_path / "run"
    _stopped_after(baseline, 2, out)
    run_train(tmp_path / "resumed.log", data_dir=records_dir, output_dir=out, strategy="one_device", **FLAGS)
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    assert "step 2 of 6" in (tmp_path / "resumed.log").read_text()
    _assert_bit_identical(baseline, out)
    _assert_same_records(baseline, out)


@pytest.mark.slow
def test_multi_worker_on_two_processes_matches_one_device(baseline, records_dir, tmp_path):
    run_multi_worker(tmp_path, data_dir=records_dir, output_dir=tmp_path / "run", strategy="multi_worker", **FLAGS)
    for worker in range(2):
        assert_ran_with(tmp_path / f"worker-{worker}.log", "multi_worker", 2)
    difference = max_weight_difference(baseline, tmp_path / "run")
    print(f"\n[invariance] multi_worker x2 vs one_device: max|dw| = {difference:.3g}")
    assert difference <= TOLERANCE
    _same_metrics(baseline, tmp_path / "run", rtol=1e-5)
    # Only the chief exported and logged; the other worker's checkpoints went to a scratch dir.
    assert (tmp_path / "run" / "export" / "unet.h5").exists()
    assert (tmp_path / "run" / "checkpoints" / ".workers" / "worker-1").is_dir()


def _wait_for_checkpoint(out, process, timeout=1800):
    """Until the first checkpoint is complete; generous, as a loaded 2-core machine can take minutes to trace."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        # The state file is written last: once it exists, a complete checkpoint does.
        if (out / "checkpoints" / "checkpoint").exists():
            return
        if process.poll() is not None:
            pytest.fail(f"train ended with {process.returncode} before its first checkpoint")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no checkpoint appeared in {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_interrupted_run_resumes_exactly(baseline, records_dir, tmp_path, how):
    out = tmp_path / "run"
    process = start_train(tmp_path / "first.log", data_dir=records_dir, output_dir=out, strategy="one_device", **FLAGS)
    _wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
    code = process.wait(timeout=300)
    log = (tmp_path / "first.log").read_text()
    if how == "kill -9":
        assert code == -signal.SIGKILL, f"the run finished before it could be killed ({code})"
    else:
        # SIGTERM: checkpoint at the end of the current loop, then exit 143.
        assert code == 143, log[-3000:]
        assert "SIGTERM received" in log
    assert not (out / "export").exists()
    run_train(tmp_path / "second.log", data_dir=records_dir, output_dir=out, strategy="one_device", **FLAGS)
    assert "resumed from" in (tmp_path / "second.log").read_text()
    _assert_bit_identical(baseline, out)
    _assert_same_records(baseline, out)


def _overflow_check(tmp_path, tf_config=None, index=0):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps({**tf_config, "task": {"type": "worker", "index": index}})
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "distributed_overflow_check.py")], env=env,
        stdout=subprocess.PIPE, stderr=open(tmp_path / f"overflow-{index}.log", "w"), text=True,
    )


def _report(process):
    try:
        # Only a hang (one replica waiting on the other) takes this long, even on a loaded 2-core machine.
        out, _ = process.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


EXPECTED_SKIP = {
    "replicas": 2, "skipped": 1.0, "loss_scale": 512.0, "weights_unchanged": True, "replicas_identical": True,
    "iterations": 0,
}


@pytest.mark.slow
def test_fp16_overflow_on_one_mirrored_replica_skips_everywhere(tmp_path):
    assert _report(_overflow_check(tmp_path)) == EXPECTED_SKIP


@pytest.mark.slow
def test_fp16_overflow_on_one_worker_skips_everywhere_without_hanging(tmp_path):
    from distributed_runs import free_ports

    cluster = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}}
    workers = [_overflow_check(tmp_path, cluster, i) for i in range(2)]
    assert [_report(w) for w in workers] == [EXPECTED_SKIP, EXPECTED_SKIP]


@pytest.mark.slow
def test_global_batch_must_divide_over_replicas(records_dir, tmp_path):
    process = start_train(
        tmp_path / "log", data_dir=records_dir, output_dir=tmp_path / "run", strategy="mirrored", num_cpu_devices=2,
        **{**FLAGS, "global_batch_size": 3},
    )
    assert process.wait(timeout=600) != 0
    assert "global_batch_size 3 is not divisible by the 2 replicas" in (tmp_path / "log").read_text()
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_resume_with_other_settings_says_what_differs(baseline, records_dir, tmp_path):
    out = tmp_path / "run"
    _stopped_after(baseline, 2, out)
    with pytest.raises(ValueError, match=r"train.global_batch_size: 2 in the checkpoint, 4 now"):
        run_command("train", data_dir=records_dir, output_dir=out, strategy="one_device", **{**FLAGS, "global_batch_size": 4})
    assert json.loads((out / "config.json").read_text())["train"]["global_batch_size"] == 2  # not overwritten
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-2.*"))  # nothing trained, nothing removed
    assert not list((out / "checkpoints").glob("ckpt-4.*"))


@pytest.mark.slow
def test_jit_compile_matches_the_uncompiled_step(baseline, records_dir, tmp_path):
    """XLA fuses differently (round-off), but draws the same noise: the random numbers are made outside it.

    XLA's dump folder shows that something was compiled: a run without XLA leaves it empty.
    """
    dump = tmp_path / "xla"
    run_train(
        tmp_path / "log", extra_env={"XLA_FLAGS": f"--xla_dump_to={dump}"}, data_dir=records_dir,
        output_dir=tmp_path / "run", strategy="one_device", jit_compile=True, **FLAGS,
    )
    compiled = sorted(p.name for p in dump.glob("*before_optimizations.txt"))
    shutil.rmtree(dump, ignore_errors=True)  # ~40 MB of compiler output (none without XLA)
    assert compiled, "--jit_compile ran, but XLA compiled nothing"
    difference = max_weight_difference(baseline, tmp_path / "run")
    print(f"\n[jit] --jit_compile vs not: max|dw| = {difference:.3g}")
    assert difference <= 1e-5  # measured 9e-7 after 4 steps
    _same_metrics(baseline, tmp_path / "run", rtol=1e-5)
