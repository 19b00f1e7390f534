"""launch.vertex_ai: the CustomJob for each machine shape, bad input stopped before submitting, and
the TF_CONFIG Vertex AI sets on a multi-machine job, fed to 2 local dbdist workers on 127.0.0.1.

Nothing here needs google-cloud-aiplatform or the network: --dry_run and the job builder are pure,
and the one test of `submit` checks the message for a missing SDK.
"""

import json
import shutil
import sys

import pytest
from absl import app, flags
from distributed_runs import metrics, run_multi_worker, vertex_tf_config

from launch import vertex_ai

IMAGE = "us-central1-docker.pkg.dev/test-project/dbdist/dbdist:0.1.0"
JOB = ("--project=test-project", "--region=us-central1", f"--container_image={IMAGE}", "--base_output_dir=gs://bkt/dog/run")
TRAIN = ("--model=sd-v1", "--data_dir=gs://bkt/dog/records", "--max_train_steps=800")
PJRT_ENV = [{"name": "NEXT_PLUGGABLE_DEVICE_USE_C_API", "value": "true"},
            {"name": "TF_PLUGGABLE_DEVICE_LIBRARY_PATH", "value": "/lib/libtpu.so"}]


def custom_job(*argv):
    """The CustomJob JSON for a launch.vertex_ai command line."""
    flags.FLAGS.unparse_flags()
    try:
        return vertex_ai.job_from_flags(flags.FLAGS(["launch.vertex_ai", *argv])[1:])[1]
    finally:
        flags.FLAGS.unparse_flags()


def run_launcher(*argv):
    flags.FLAGS.unparse_flags()
    try:
        return vertex_ai.main(flags.FLAGS(["launch.vertex_ai", *argv]))
    finally:
        flags.FLAGS.unparse_flags()


def _container(module, args, **extra):
    return {"imageUri": IMAGE, "command": ["python", "-m", module], "args": list(args), **extra}


def test_one_gpu_machine_trains_mirrored(capsys):
    argv = (*JOB, "--machine_type=g2-standard-8", "--accelerator_type=NVIDIA_L4", "--", *TRAIN)
    expected = {"displayName": "dbdist-train", "jobSpec": {
        "workerPoolSpecs": [{
            "machineSpec": {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4", "acceleratorCount": 1},
            "replicaCount": 1,
            "containerSpec": _container("dbdist.train", ["--strategy=mirrored", *TRAIN]),
        }],
        "baseOutputDirectory": {"outputUriPrefix": "gs://bkt/dog/run"},
    }}
    assert custom_job(*argv) == expected
    assert run_launcher("--dry_run", *argv) == 0
    assert json.loads(capsys.readouterr().out) == expected  # --dry_run prints exactly the job


def test_several_gpu_machines_train_multi_worker():
    job = custom_job(*JOB, "--machine_type=a2-highgpu-1g", "--accelerator_type=NVIDIA_TESLA_A100", "--replica_count=3",
                     "--service_account=trainer@test-project.iam.gserviceaccount.com", "--spot", "--display_name=dog",
                     "--", *TRAIN, "--global_batch_size=3")
    machine = {"machineType": "a2-highgpu-1g", "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 1}
    container = _container("dbdist.train", ["--strategy=multi_worker", *TRAIN, "--global_batch_size=3"])
    assert job == {"displayName": "dog", "jobSpec": {
        # Pool 0: the chief, exactly one replica (Vertex's rule); pool 1: the other workers.
        "workerPoolSpecs": [{"machineSpec": machine, "replicaCount": 1, "containerSpec": container},
                            {"machineSpec": machine, "replicaCount": 2, "containerSpec": container}],
        "baseOutputDirectory": {"outputUriPrefix": "gs://bkt/dog/run"},
        "serviceAccount": "trainer@test-project.iam.gserviceaccount.com",
        "scheduling": {"restartJobOnWorkerRestart": True, "strategy": "SPOT"},
    }}


@pytest.mark.parametrize("machine, spec, args", [
    (("--machine_type=ct5lp-hightpu-4t",), {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}, ("--global_batch_size=4",)),
    (("--machine_type=cloud-tpu", "--accelerator_type=TPU_V3"),
     {"machineType": "cloud-tpu", "acceleratorType": "TPU_V3", "acceleratorCount": 8}, ("--global_batch_size=8",)),
])
def test_a_tpu_machine_trains_on_its_local_tpu(machine, spec, args):
    job = custom_job(*JOB, *machine, "--", *TRAIN, *args)
    assert job["jobSpec"]["workerPoolSpecs"] == [{
        "machineSpec": spec, "replicaCount": 1,
        "containerSpec": _container("dbdist.train", ["--strategy=tpu", "--tpu=local", *TRAIN, *args], env=PJRT_ENV),
    }]


def test_make_tfrecords_first_then_train_in_one_job():
    job = custom_job(*JOB, "--machine_type=a2-highgpu-2g", "--accelerator_type=NVIDIA_TESLA_A100",
                     "--make_tfrecords=--instance_dir=gs://bkt/dog --instance_prompt='a photo of sks dog' "
                     "--class_dir=gs://bkt/dogs --class_prompt='a photo of dog' --num_class_images=200",
                     "--", "--model=sd-v1", "--global_batch_size=2")
    container = job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    assert container["command"] == ["python", "-m", "launch.stages"]
    assert container["args"] == [
        "--strategy=mirrored", "--instance_dir=gs://bkt/dog", "--instance_prompt=a photo of sks dog",
        "--class_dir=gs://bkt/dogs", "--class_prompt=a photo of dog", "--num_class_images=200",
        "--output_dir=gs://bkt/dog/run/records",  # no folder named: the job's own
        "--", "--strategy=mirrored", "--model=sd-v1", "--global_batch_size=2", "--data_dir=gs://bkt/dog/run/records"]


A100 = ("--machine_type=a2-highgpu-1g", "--accelerator_type=NVIDIA_TESLA_A100")


@pytest.mark.parametrize("argv, message", [
    ((*JOB[1:], *A100, "--", *TRAIN), r"missing required flag\(s\): --project"),
    ((JOB[0], *JOB[2:], *A100, "--", *TRAIN), r"missing required flag\(s\): --region"),
    ((*JOB[:3], *A100, "--", *TRAIN), r"missing required flag\(s\): --base_output_dir"),
    ((*JOB[:3], "--base_output_dir=/home/me/run", *A100, "--", *TRAIN), r"--base_output_dir='/home/me/run' must be a gs://BUCKET/PATH"),
    ((*JOB[:3], "--base_output_dir=s3://bkt/run", *A100, "--", *TRAIN), r"--base_output_dir='s3://bkt/run' must be a gs://"),
    ((*JOB, "--machine_type=a2-highgpu-1g", "--accelerator_type=NVIDIA_TESLA_K9000", "--", *TRAIN),
     r"--accelerator_type='NVIDIA_TESLA_K9000' does not exist on Vertex AI; valid shapes: GPUs: NVIDIA_L4 on"),
    ((*JOB, "--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_L4", "--", *TRAIN), r"NVIDIA_L4 comes on --machine_type in"),
    ((*JOB, *A100, "--replica_count=2", "--", *TRAIN, "--global_batch_size=2", "--strategy=one_device"),
     r"--strategy=one_device \(after -- for dbdist.train\) does not run on Vertex AI \(2 x a2-highgpu-1g .*use --strategy=multi_worker"),
    ((*JOB, *A100, "--replica_count=2", "--", *TRAIN, "--global_batch_size=2", "--strategy=mirrored"), r"use --strategy=multi_worker"),
    ((*JOB, "--machine_type=ct5lp-hightpu-4t", "--replica_count=2", "--", *TRAIN), r"--replica_count=2: a Vertex AI TPU job here is one"),
    ((*JOB, *A100, "--replica_count=0", "--", *TRAIN), r"--replica_count must be >= 1, got 0"),
    ((*JOB, *A100, "--", *TRAIN, "--max_train_step=5"), r"dbdist.train, which refuses them: Unknown command line flag 'max_train_step'"),
    ((*JOB, *A100, "--", *TRAIN, "--output_dir=runs/dog"), r"--output_dir \(after -- for dbdist.train\)='runs/dog' must be a gs://"),
    ((*JOB, "--machine_type=a2-highgpu-8g", "--accelerator_type=NVIDIA_TESLA_A100", "--", *TRAIN),
     r"--global_batch_size=1 \(after -- for dbdist.train, its default\) is not divisible by the 8 replicas"),
    ((*JOB[:2], "--container_image=dbdist latest", JOB[3], *A100, "--", *TRAIN), r"--container_image='dbdist latest' is not an image URI"),
    ((*JOB, *A100, "--", "--model=sd-v1"), r"--data_dir=gs://... is required after --"),
])
def test_bad_input_stops_before_anything_is_submitted(monkeypatch, argv, message):
    monkeypatch.setattr(vertex_ai, "submit", lambda *a, **k: pytest.fail("nothing may be submitted"))
    with pytest.raises(app.UsageError, match=message):
        run_launcher(*argv)


def test_submitting_without_the_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)  # as when it is not installed
    flags.FLAGS.unparse_flags()
    try:
        rest = flags.FLAGS(["launch.vertex_ai", *JOB, *A100, "--", *TRAIN])
        job, resource = vertex_ai.job_from_flags(rest[1:])
    finally:
        flags.FLAGS.unparse_flags()
    with pytest.raises(app.UsageError, match=r"pip install 'dbdist\[launch\]'"):
        vertex_ai.submit(job, resource, "test-project", wait=False)


def test_sdk_dicts_spell_fields_in_snake_case():
    assert vertex_ai.to_sdk({"machineSpec": {"acceleratorCount": 1, "tpuTopology": "2x2"}, "replicaCount": 2}) == {
        "machine_spec": {"accelerator_count": 1, "tpu_topology": "2x2"}, "replica_count": 2}


@pytest.mark.distributed
@pytest.mark.slow  # only in make test-all: two training processes
def test_vertex_multi_worker_job_trains_on_two_local_workers(records_dir, tmp_path, monkeypatch):
    """The job's own container args and Vertex AI's TF_CONFIG and AIP_* variables, on 127.0.0.1."""
    job = custom_job("--project=test-project", "--region=us-central1", "--machine_type=n1-standard-4",
                     "--replica_count=2", f"--container_image={IMAGE}", "--base_output_dir=gs://bkt/job",
                     "--", "--model=tiny", "--data_dir=gs://bkt/records", "--max_train_steps=4", "--global_batch_size=2",
                     "--checkpoint_every=2", "--log_every=1", "--learning_rate=1e-4", "--seed=3")
    chief_pool, worker_pool = job["jobSpec"]["workerPoolSpecs"]
    container = chief_pool["containerSpec"]
    assert worker_pool["containerSpec"] == container and container["command"] == ["python", "-m", "dbdist.train"]
    # gs://bkt stands for a local folder here; there is no --output_dir: the AIP_* variables decide.
    bucket = tmp_path / "bkt"
    shutil.copytree(records_dir, bucket / "records")
    job_dir = bucket / "job"
    for name, folder in (("AIP_CHECKPOINT_DIR", "checkpoints"), ("AIP_MODEL_DIR", "model"), ("AIP_TENSORBOARD_LOG_DIR", "logs")):
        monkeypatch.setenv(name, f"{job_dir}/{folder}/")  # what baseOutputDirectory makes Vertex AI set
    train_flags = dict(arg.replace("gs://bkt/", f"{bucket}/").removeprefix("--").split("=", 1) for arg in container["args"])
    assert train_flags["strategy"] == "multi_worker" and "output_dir" not in train_flags

    run_multi_worker(tmp_path, tf_config=lambda addresses, i: vertex_tf_config(addresses, i, job=job["jobSpec"]),
                     **train_flags)

    assert (job_dir / "export" / "unet.h5").exists()  # written by the chief (pool 0) only
    assert [r["step"] for r in metrics(job_dir)] == [1, 2, 3, 4]
    assert (job_dir / "checkpoints" / "checkpoint").exists()  # the chief's checkpoints are AIP_CHECKPOINT_DIR
    assert (job_dir / "checkpoints" / ".workers" / "worker-0").is_dir()  # pool 1's worker 0 saves to scratch
    assert json.loads((job_dir / "config.json").read_text())["runtime"]["strategy"] == "multi_worker"
