"""launch.tpu_vm: the gcloud calls for each TPU VM shape, bad input stopped before any call, and
preemption (SIGTERM) followed by a relaunch that resumes.

No test reaches Google Cloud: tests/fake_gcloud/gcloud, a test double of the CLI, is first on PATH
(see its docstring). It records every call and runs the training command here, with
--strategy=one_device for the TPU and a local folder for gs://.
"""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
from absl import app, flags
from distributed_runs import REPO, metrics

from launch import tpu_vm

FAKE_GCLOUD = REPO / "tests" / "fake_gcloud"
G = ["gcloud", "compute", "tpus", "tpu-vm"]
V4 = ("--project=test-project", "--zone=us-central2-b", "--tpu_name=db-v4", "--accelerator_type=v4-8")
TRAIN = ("--model=sd-v1", "--data_dir=gs://bkt/dog/records", "--output_dir=gs://bkt/dog/run", "--global_batch_size=4")
# One host: TensorFlow's PJRT device on the libtpu.so of the pinned libtpu package.
PJRT = "NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=\"$(python3 -c 'import libtpu; print(libtpu.get_library_path())')\""
# launch/tpu_runtimes.py's pins, then TensorFlow's TPU build over dbdist's `tensorflow`.
PINS = "tensorflow==2.20.0 tensorboard==2.20.0 keras==3.12.4 keras-cv==0.9.0"
TPU_BUILD = "python3 -m pip install --quiet --force-reinstall --no-deps tensorflow-tpu==2.20.0 libtpu==0.0.14"


def _loc(zone="us-central2-b"):
    return [f"--zone={zone}", "--project=test-project"]


@pytest.fixture
def gcloud_state(tmp_path, monkeypatch):
    """The fake gcloud first on PATH; returns its state folder (calls.jsonl, vm-*.json)."""
    state = tmp_path / "gcloud"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_GCLOUD}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(state))
    return state


def calls(state):
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_launcher(*argv):
    """launch.tpu_vm's main on a parsed command line, in this process."""
    flags.FLAGS.unparse_flags()
    try:
        return tpu_vm.main(flags.FLAGS(["launch.tpu_vm", *argv]))
    finally:
        flags.FLAGS.unparse_flags()


def plan(*argv):
    flags.FLAGS.unparse_flags()
    try:
        return tpu_vm.plan_from_flags(flags.FLAGS(["launch.tpu_vm", *argv])[1:])
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture
def wheel(tmp_path):
    path = tmp_path / "dist" / "dbdist-0.1.0-py3-none-any.whl"
    path.parent.mkdir()
    path.write_bytes(b"a wheel")
    return str(path)


def test_single_host_plan(wheel, gcloud_state, capsys):
    argv = (*V4, "--create", f"--install={wheel}", "--spot", "--max_restarts=3", "--delete_after",
            "--service_account=trainer@test-project.iam.gserviceaccount.com", "--", *TRAIN)
    p = plan(*argv)
    assert p.vm.describe() == G + ["describe", "db-v4", *_loc(), "--format=value(state,acceleratorType)"]
    assert p.vm.create() == G + ["create", "db-v4", *_loc(), "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
                                 "--service-account=trainer@test-project.iam.gserviceaccount.com",
                                 "--scopes=https://www.googleapis.com/auth/cloud-platform", "--spot"]
    pip = (f"python3 -m pip install --quiet dbdist-0.1.0-py3-none-any.whl {PINS} && "
           f"python3 -m pip install --quiet --force-reinstall --no-deps dbdist-0.1.0-py3-none-any.whl && {TPU_BUILD}")
    assert p.install == (tuple(G + ["scp", wheel, "db-v4:", *_loc(), "--worker=all"]),
                         tuple(G + ["ssh", "db-v4", *_loc(), "--worker=all", f"--command={pip}"]))
    # One host: the same command on every worker (the one VM), the TPU as a local PJRT device.
    assert p.run == tuple(G + ["ssh", "db-v4", *_loc(), "--worker=all",
                               f"--command={PJRT} python3 -m dbdist.train --strategy=tpu --tpu=local {' '.join(TRAIN)}"])
    assert p.vm.delete() == G + ["delete", "db-v4", *_loc(), "--quiet"]

    assert run_launcher("--dry_run", *argv) == 0
    printed = capsys.readouterr().out
    runtime_check = ["gcloud", "compute", "tpus", "tpu-vm", "versions", "describe", "tpu-ubuntu2204-base", *_loc()]
    assert p.vm.describe_runtime() == runtime_check
    for argv_list in (p.vm.describe(), runtime_check, p.vm.create(), *p.install, p.run, p.vm.delete()):
        assert shlex.join(argv_list) in printed
    assert calls(gcloud_state) == []  # a dry run calls nothing


def test_pod_slice_runs_one_client_on_worker_0_with_records_first():
    p = plan("--project=test-project", "--zone=us-east5-a", "--tpu_name=db-v5p", "--accelerator_type=v5p-16",
             "--install=git+https://github.com/example/dbdist@v0.1.0",
             "--make_tfrecords=--instance_dir=gs://bkt/dog --instance_prompt='a photo of sks dog' --class_dir=gs://bkt/dogs "
             "--class_prompt='a photo of dog' --num_class_images=200 --class_batch_size=8",
             "--", "--model=sd-v1", "--output_dir=gs://bkt/dog/run", "--data_dir=gs://bkt/dog/records",
             "--global_batch_size=8")
    loc = _loc("us-east5-a")
    assert p.vm.create() == G + ["create", "db-v5p", *loc, "--accelerator-type=v5p-16",
                                 "--version=tpu-vm-tf-2.20.0-pod-pjrt", "--scopes=https://www.googleapis.com/auth/cloud-platform"]
    # A pod slice's client also needs what TensorFlow's Cloud TPU API client imports.
    assert p.install == (tuple(G + ["ssh", "db-v5p", *loc, "--worker=all", "--command=python3 -m pip install --quiet "
                                    f"git+https://github.com/example/dbdist@v0.1.0 {PINS} google-api-python-client==2.202.0 "
                                    "oauth2client==4.1.3 && python3 -m pip install --quiet --force-reinstall --no-deps "
                                    f"git+https://github.com/example/dbdist@v0.1.0 && {TPU_BUILD}"]),)
    *head, command = p.run
    assert head == G + ["ssh", "db-v5p", *loc, "--worker=0"]
    assert shlex.split(command.removeprefix("--command=")) == [
        "TPU_LOAD_LIBRARY=0", "python3", "-m", "launch.stages",
        "--strategy=tpu", "--tpu=db-v5p", "--instance_dir=gs://bkt/dog", "--instance_prompt=a photo of sks dog",
        "--class_dir=gs://bkt/dogs", "--class_prompt=a photo of dog", "--num_class_images=200", "--class_batch_size=8",
        "--output_dir=gs://bkt/dog/records",
        "--", "--strategy=tpu", "--tpu=db-v5p", "--model=sd-v1", "--output_dir=gs://bkt/dog/run",
        "--data_dir=gs://bkt/dog/records", "--global_batch_size=8"]


def test_existing_v5e_vm_with_a_runtime_of_choice(capsys, gcloud_state):
    argv = ("--project=test-project", "--zone=us-west4-a", "--tpu_name=db-v5e", "--accelerator_type=v5litepod-8",
            "--runtime_version=v2-alpha-tpuv5-lite", "--dry_run", "--", *TRAIN[:3], "--global_batch_size=8")
    assert run_launcher(*argv) == 0
    printed = capsys.readouterr().out
    assert " create " not in printed and " delete " not in printed and "pip install" not in printed
    assert "--worker=all" in printed and "--strategy=tpu --tpu=local" in printed
    assert plan(*argv).run[-1].startswith(f"--command={PJRT} python3 -m dbdist.train --strategy=tpu --tpu=local ")


# --engine=jax: jax[tpu] (libtpu from PyPI) with the TPU VM's JAX pins, nothing installed over it.
JAX_PINS = ("'jax[tpu]==0.6.2' optax==0.2.8 orbax-checkpoint==0.11.39 "
            "tensorflow==2.20.0 tensorboard==2.20.0 keras==3.12.4 keras-cv==0.9.0")


def test_jax_engine_on_one_host_runs_every_worker_with_the_jax_backend(wheel):
    p = plan("--project=test-project", "--zone=us-west4-a", "--tpu_name=db-v5e", "--accelerator_type=v5litepod-8",
             "--engine=jax", "--create", f"--install={wheel}", "--", *TRAIN[:3], "--global_batch_size=8")
    loc = _loc("us-west4-a")
    # Google's base software version for v5e: JAX brings its own libtpu.
    assert p.vm.create() == G + ["create", "db-v5e", *loc, "--accelerator-type=v5litepod-8",
                                 "--version=v2-alpha-tpuv5-lite", "--scopes=https://www.googleapis.com/auth/cloud-platform"]
    pip = (f"python3 -m pip install --quiet dbdist-0.1.0-py3-none-any.whl {JAX_PINS} && "
           "python3 -m pip install --quiet --force-reinstall --no-deps dbdist-0.1.0-py3-none-any.whl")
    assert p.install == (tuple(G + ["scp", wheel, "db-v5e:", *loc, "--worker=all"]),
                         tuple(G + ["ssh", "db-v5e", *loc, "--worker=all", f"--command={pip}"]))
    assert p.run == tuple(G + ["ssh", "db-v5e", *loc, "--worker=all", "--command=KERAS_BACKEND=jax python3 -m dbdist.train "
                               f"--strategy=data_parallel {' '.join(TRAIN[:3])} --global_batch_size=8"])


def test_jax_engine_on_a_slice_runs_one_process_per_host():
    """JAX is multi-controller: every host of the slice runs the same command (not one client on worker 0)."""
    p = plan("--project=test-project", "--zone=us-east5-a", "--tpu_name=db-v5p", "--accelerator_type=v5p-16", "--engine=jax",
             "--install=git+https://github.com/example/dbdist@v0.1.0", "--", *TRAIN[:3], "--global_batch_size=16")
    loc = _loc("us-east5-a")
    assert p.vm.runtime_version == "v2-alpha-tpuv5"  # not the TensorFlow -pod software version
    assert p.install == (tuple(G + ["ssh", "db-v5p", *loc, "--worker=all", "--command=python3 -m pip install --quiet "
                                    f"git+https://github.com/example/dbdist@v0.1.0 {JAX_PINS} && python3 -m pip install "
                                    "--quiet --force-reinstall --no-deps git+https://github.com/example/dbdist@v0.1.0"]),)
    *head, command = p.run
    assert head == G + ["ssh", "db-v5p", *loc, "--worker=all"]
    assert shlex.split(command.removeprefix("--command=")) == [
        "KERAS_BACKEND=jax", "python3", "-m", "dbdist.train", "--strategy=data_parallel", "--jax_distributed",
        *TRAIN[:3], "--global_batch_size=16"]
    assert "TPU_LOAD_LIBRARY" not in command and "--tpu=" not in command


@pytest.mark.parametrize("argv, message", [
    (("--engine=jax", *V4, "--", *TRAIN, "--strategy=tpu"),
     r"--strategy=tpu \(after -- for dbdist.train\) does not run on the TPU VM db-v4 \(v4-8, one host, JAX engine\): "
     r"use --strategy=data_parallel, or leave --strategy out"),
    (("--engine=jax", *V4, "--runtime_version=tpu-vm-tf-2.20.0-pjrt", "--", *TRAIN),
     r"cannot run dbdist's JAX engine on v4-8: it is a TensorFlow TPU software version"),
    (("--engine=jax", *V4, "--make_tfrecords=--instance_dir=gs://bkt/i --instance_prompt=p", "--", *TRAIN),
     r"--make_tfrecords runs with TensorFlow, which --engine=jax does not install"),
    (("--engine=jax", *V4[:3], "--accelerator_type=v5p-16", "--", *TRAIN[:3], "--global_batch_size=12"),
     r"--global_batch_size=12 .* is not divisible by the 8 replicas of the TPU VM db-v4 \(v5p-16, multi-host pod slice, "
     r"JAX engine\)"),
    (("--engine=pytorch", *V4, "--", *TRAIN), r"--engine"),
])
def test_jax_engine_bad_input_stops_before_any_gcloud_call(gcloud_state, argv, message):
    with pytest.raises((app.UsageError, flags.IllegalFlagValueError), match=message):
        run_launcher(*argv)
    assert calls(gcloud_state) == []


@pytest.mark.parametrize("argv, message", [
    (V4[1:] + ("--",) + TRAIN, r"missing required flag\(s\): --project"),
    ((V4[0], *V4[2:], "--", *TRAIN), r"missing required flag\(s\): --zone"),
    ((*V4[:3], "--accelerator_type=v4-7", "--", *TRAIN), r"--accelerator_type='v4-7' is not a TPU VM accelerator type; expected one of: v2-"),
    ((*V4[:3], "--accelerator_type=v9-8", "--", *TRAIN), r"--accelerator_type='v9-8' is not a TPU VM accelerator type"),
    (("--project=test-project", "--zone=uscentral", *V4[2:], "--", *TRAIN), r"--zone='uscentral' is not a zone"),
    (("--project=test-project", "--zone=us-central2-b", "--tpu_name=DB_V4", V4[3], "--", *TRAIN), r"--tpu_name='DB_V4' must be lowercase"),
    ((*V4, "--", *TRAIN[:2], "--output_dir=/home/me/run", TRAIN[3]),
     r"--output_dir \(after -- for dbdist.train\)='/home/me/run' must be a gs://BUCKET/PATH Cloud Storage URI \(bucket names.*\): the TPU VM db-v4"),
    ((*V4, "--", *TRAIN[:2], TRAIN[3]), r"--output_dir=gs://BUCKET/RUN is required after --"),
    ((*V4, "--", *TRAIN[:1], TRAIN[2], TRAIN[3]), r"--data_dir=gs://... is required after --"),
    ((*V4, "--", *TRAIN, "--max_train_step=800"), r"dbdist.train, which refuses them: Unknown command line flag 'max_train_step'"),
    ((*V4, "--", *TRAIN, "--strategy=mirrored"), r"--strategy=mirrored \(after -- for dbdist.train\) does not run on the TPU VM db-v4"),
    ((*V4, "--", *TRAIN, "--tpu=other"), r"--tpu=other .* needs --tpu=local"),
    ((*V4, "--", *TRAIN[:3]), r"--global_batch_size=1 \(after -- for dbdist.train, its default\) is not divisible by the 4 replicas"),
    ((*V4, "--max_restarts=2", "--", *TRAIN), r"--max_restarts=2 relaunches on a re-created VM .* needs --create and --install"),
    ((*V4, "--install=dbdist==0.1.0", "--", *TRAIN), r"--install='dbdist==0.1.0': expected a wheel"),
    ((*V4, "--runtime_version=tpu-vm-tf-2.21.0-pjrt", "--", *TRAIN),
     r"--runtime_version='tpu-vm-tf-2.21.0-pjrt' cannot run dbdist on v4-8: TensorFlow's TPU build stops at "
     r"tensorflow-tpu 2\.20\.0 .* Supported for v4-8: tpu-ubuntu2204-base"),
    ((*V4, "--runtime_version=tpu-vm-tf-2.18.0-pjrt", "--", *TRAIN), r"it carries TensorFlow 2\.18\.0 on Python 3\.10"),
    ((*V4[:3], "--accelerator_type=v5litepod-16", "--runtime_version=v2-alpha-tpuv5-lite", "--", *TRAIN[:3],
      "--global_batch_size=16"), r"v5litepod-16 is a multi-host pod slice\. Supported for v5litepod-16: tpu-vm-tf-2\.20\.0-pod-pjrt"),
    ((*V4, "--install=dist/missing-0.1-py3-none-any.whl", "--", *TRAIN), r"no such wheel here"),
    ((*V4, "--make_tfrecords=--instance_dir=photos --instance_prompt=p", "--", *TRAIN),
     r"--instance_dir \(in --make_tfrecords\)='photos' must be a gs://"),
])
def test_bad_input_stops_before_any_gcloud_call(gcloud_state, argv, message):
    with pytest.raises(app.UsageError, match=message):
        run_launcher(*argv)
    assert calls(gcloud_state) == []


def test_missing_vm_without_create_only_looks(gcloud_state):
    with pytest.raises(app.UsageError, match=r"the TPU VM db-v4 does not exist in us-central2-b; pass --create"):
        run_launcher(*V4, "--", *TRAIN)
    assert [c[3] for c in calls(gcloud_state)] == ["describe"]


def test_a_runtime_the_zone_does_not_offer_stops_before_create(gcloud_state, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_MISSING_VERSIONS", "tpu-vm-tf-2.20.0-pod-pjrt")
    with pytest.raises(app.UsageError, match=r"the zone us-east5-a does not offer the TPU software version "
                                             r"tpu-vm-tf-2\.20\.0-pod-pjrt that v5p-16 needs \(.*NOT_FOUND.*\); see what it "
                                             r"offers with `gcloud compute tpus tpu-vm versions list --zone=us-east5-a`"):
        run_launcher("--project=test-project", "--zone=us-east5-a", "--tpu_name=db-v5p", "--accelerator_type=v5p-16",
                     "--create", "--install=git+https://github.com/example/dbdist@v1", "--",
                     *TRAIN[:3], "--global_batch_size=8")
    assert [c[3:6] for c in calls(gcloud_state)] == [["describe", "db-v5p", "--zone=us-east5-a"],
                                                      ["versions", "describe", "tpu-vm-tf-2.20.0-pod-pjrt"]]


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """A stand-in for the remote `python3`: exits 143 (preempted) the first time, then 0."""
    script = tmp_path / "fake-python3"
    script.write_text("#!/bin/sh\nif [ -e \"$FAKE_TRAINER_MARK\" ]; then exit \"${FAKE_TRAINER_SECOND:-0}\"; fi\n"
                      "touch \"$FAKE_TRAINER_MARK\"\nexit \"${FAKE_TRAINER_FIRST:-143}\"\n")
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_TRAINER_MARK", str(tmp_path / "ran-once"))
    monkeypatch.setenv("FAKE_GCLOUD_RUN", r"dbdist\.train")
    monkeypatch.setenv("FAKE_GCS_ROOT", str(tmp_path / "gcs"))
    return str(script)


def _events(state):
    """Each call as its verb, with 'install' / 'train' for the two kinds of ssh."""
    return [c[3] if c[3] != "ssh" else ("train" if "dbdist.train" in c[-1] else "install") for c in calls(state)]


def test_preempted_run_is_relaunched_on_a_recreated_vm(gcloud_state, fake_trainer):
    code = run_launcher(*V4, "--create", "--install=git+https://github.com/example/dbdist@v1", "--max_restarts=2",
                        "--delete_after", f"--remote_python={fake_trainer}", "--", *TRAIN)
    assert code == 0
    assert _events(gcloud_state) == [
        "describe", "versions", "create", "describe", "install", "train",  # first attempt, preempted (143 -> VM PREEMPTED)
        "describe", "describe", "versions", "delete", "create", "describe", "install", "train",  # re-created, relaunched
        "delete",  # --delete_after
    ]


def test_a_failure_that_is_not_a_preemption_is_not_retried(gcloud_state, fake_trainer, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_FIRST", "1")
    code = run_launcher(*V4, "--create", "--install=git+https://github.com/example/dbdist@v1", "--max_restarts=2",
                        f"--remote_python={fake_trainer}", "--", *TRAIN)
    assert code == 1
    assert _events(gcloud_state) == ["describe", "versions", "create", "describe", "install", "train", "describe"]
    assert json.loads((gcloud_state / "vm-db-v4.json").read_text())["state"] == "READY"  # kept: no --delete_after


def _train_pid(marker, timeout=600):
    """The pid of the `python -m dbdist.train` whose arguments mention `marker`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in pathlib.Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-m", b"dbdist.train"] and any(marker.encode() in a for a in argv):
                return int(proc.name)
        time.sleep(0.05)
    pytest.fail("the training process did not start")


@pytest.mark.distributed
@pytest.mark.slow  # only in make test-all: training processes stopped and relaunched
def test_sigterm_on_the_tpu_vm_then_relaunch_resumes(records_dir, tmp_path, gcloud_state):
    """Real dbdist (tiny preset) behind the fake gcloud: SIGTERM mid-run, relaunch, resume, export."""
    import shutil

    gcs = tmp_path / "gcs"
    shutil.copytree(records_dir, gcs / "bkt" / "records")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "FAKE_GCLOUD_RUN": r"dbdist\.train",
           "FAKE_GCS_ROOT": str(gcs)}
    env.pop("TF_CONFIG", None)
    argv = [sys.executable, "-m", "launch.tpu_vm", "--project=test-project", "--zone=us-west4-a", "--tpu_name=db-test",
            "--accelerator_type=v5litepod-1", "--create", "--install=git+https://github.com/example/dbdist@v1",
            "--max_restarts=2", "--delete_after", f"--remote_python={sys.executable}", "--",
            "--model=tiny", "--data_dir=gs://bkt/records", "--output_dir=gs://bkt/run", "--max_train_steps=4",
            "--global_batch_size=2", "--checkpoint_every=1", "--log_every=1", "--learning_rate=1e-4", "--seed=3"]
    log = tmp_path / "launcher.log"
    launcher = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    run = gcs / "bkt" / "run"
    pid = _train_pid(str(run))
    deadline = time.time() + 600
    while not (run / "checkpoints" / "checkpoint").exists():  # the state file is written after the checkpoint
        assert launcher.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)  # what the VM's shutdown sends the trainer when it is preempted
    assert launcher.wait(timeout=900) == 0, log.read_text()[-4000:]

    text = log.read_text()
    assert "SIGTERM received" in text and "preempted (exit code 255, VM PREEMPTED): relaunch 1 of 2" in text
    resumed_at = [int(line.rsplit("at step ", 1)[1]) for line in text.splitlines() if "resumed from" in line]
    assert len(resumed_at) == 1 and 1 <= resumed_at[0] < 4, text[-3000:]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]  # the second run continued the first
    assert (run / "export" / "unet.h5").exists()
    assert _events(gcloud_state).count("train") == 2
    assert not (gcloud_state / "vm-db-test.json").exists()  # --delete_after
