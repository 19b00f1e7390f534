"""The launchers' parts, each on its own: accelerator tables, flag checking, Vertex AI's AIP_* folders, stages."""

import pytest
from absl import app, flags

from dbdist.training import cloud_env
from launch import stages
from launch.accelerators import tpu_vm_type, vertex_machine
from launch.command_flags import parse_command_args
from launch.run_args import Placement, dbdist_run


@pytest.mark.parametrize("name, replicas, multi_host", [
    ("v4-8", 4, False),  # 4 chips, one megacore device each
    ("v4-32", 16, True),
    ("v5litepod-8", 8, False),
    ("v5litepod-16", 16, True),
    ("v5p-8", 4, False),
    ("v5p-16", 8, True),
    ("v6e-1", 1, False),
    ("v3-8", 8, False),
])
def test_tpu_vm_types(name, replicas, multi_host):
    t = tpu_vm_type(name)
    assert (t.name, t.replicas, t.multi_host) == (name, replicas, multi_host)


@pytest.mark.parametrize("name", ["v4-7", "v5e-8", "v5p-12", "v9-8", "tpu", "", None])
def test_unknown_tpu_vm_type_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"is not a TPU VM accelerator type; expected one of: v2-\{8,32.*v5litepod-\{1,4,8"):
        tpu_vm_type(name)


@pytest.mark.parametrize("args, spec, replicas", [
    (("g2-standard-8", "NVIDIA_L4", 0), {"machineType": "g2-standard-8", "acceleratorType": "NVIDIA_L4", "acceleratorCount": 1}, 1),
    (("a2-highgpu-4g", "NVIDIA_TESLA_A100", 0), {"machineType": "a2-highgpu-4g", "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 4}, 4),
    (("a3-highgpu-8g", "NVIDIA_H100_80GB", 8), {"machineType": "a3-highgpu-8g", "acceleratorType": "NVIDIA_H100_80GB", "acceleratorCount": 8}, 8),
    (("n1-standard-8", "NVIDIA_TESLA_T4", 2), {"machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 2}, 2),
    (("n1-standard-8", "", 0), {"machineType": "n1-standard-8"}, 1),
    (("cloud-tpu", "TPU_V3", 8), {"machineType": "cloud-tpu", "acceleratorType": "TPU_V3", "acceleratorCount": 8}, 8),
    (("ct5lp-hightpu-4t", "", 0), {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}, 4),
])
def test_vertex_machine_specs(args, spec, replicas):
    machine = vertex_machine(*args)
    assert machine.machine_spec() == spec
    assert machine.replicas == replicas


@pytest.mark.parametrize("args, message", [
    (("a2-highgpu-1g", "NVIDIA_TESLA_K9000", 0), r"--accelerator_type='NVIDIA_TESLA_K9000' does not exist on Vertex AI; valid shapes: GPUs: NVIDIA_L4 on"),
    (("n1-standard-8", "NVIDIA_L4", 0), r"NVIDIA_L4 comes on --machine_type in \['g2-standard-12'"),
    (("a2-highgpu-1g", "NVIDIA_TESLA_A100", 2), r"a2-highgpu-1g has 1 x NVIDIA_TESLA_A100; got --accelerator_count=2"),
    (("n1-standard-8", "NVIDIA_TESLA_T4", 3), r"with --accelerator_count in \(1, 2, 4\)"),
    (("ct6e-standard-4t", "", 0), r"TPU v6e for JAX and PyTorch only"),
    (("cloud-tpu", "TPU_V3", 4), r"--accelerator_count=8; got 'cloud-tpu', 'TPU_V3', 4"),
    (("a9-supergpu-1g", "", 0), r"is not a CPU machine type"),
    (("", "NVIDIA_L4", 0), r"--machine_type is required"),
])
def test_bad_vertex_machines_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        vertex_machine(*args)


# --- flags after -- (asked of dbdist itself) --------------------------------------------------------

def test_flags_are_those_of_the_command_itself():
    args = parse_command_args("train", ["--data_dir=gs://bkt/r", "--max_train_steps", "5", "--nojit_compile"])
    assert args.given == {"data_dir": "gs://bkt/r", "max_train_steps": 5, "jit_compile": False}
    assert args.value("global_batch_size") == 1  # train's default
    assert parse_command_args("make_tfrecords", []).knows("instance_prompt")
    assert not parse_command_args("train", []).knows("instance_prompt")  # make_tfrecords' flag only


@pytest.mark.parametrize("args, message", [
    (["--max_train_step=5"], r"dbdist.train, which refuses them: Unknown command line flag 'max_train_step'"),
    (["--strategy=gpu"], r"flag --strategy=gpu: value should be one of <one_device\|mirrored\|multi_worker\|tpu\|data_parallel>"),
    (["--learning_rate=fast"], r"flag --learning_rate=fast"),
    (["--prompt=a dog"], r"Unknown command line flag 'prompt'"),  # generate's flag, not train's
    (["extra"], r"takes flags only \(--name=value\); got \['extra'\]"),
])
def test_flags_the_command_does_not_take_are_refused(args, message):
    with pytest.raises(app.UsageError, match=message):
        parse_command_args("train", args)


GPU = Placement("Vertex AI (1 x a2-highgpu-2g)", "mirrored", ("mirrored", "one_device"), 2)


def test_records_folder_joins_the_two_commands():
    run = dbdist_run(GPU, ["--output_dir=gs://bkt/run", "--global_batch_size=2"],
                     "--instance_dir=gs://bkt/dog --instance_prompt='a photo of sks dog' --output_dir=gs://bkt/rec")
    assert run.train_args == ("--strategy=mirrored", "--output_dir=gs://bkt/run", "--global_batch_size=2", "--data_dir=gs://bkt/rec")
    assert run.records_args == ("--strategy=mirrored", "--instance_dir=gs://bkt/dog", "--instance_prompt=a photo of sks dog",
                                "--output_dir=gs://bkt/rec")
    assert run.module_argv()[:3] == ["-m", "launch.stages", "--strategy=mirrored"]
    default = dbdist_run(GPU, ["--output_dir=gs://bkt/run", "--global_batch_size=2"],
                         "--instance_dir=gs://bkt/dog --instance_prompt=p", default_records_dir="gs://bkt/job/records")
    assert default.train_args[-1] == "--data_dir=gs://bkt/job/records"
    assert default.records_args[-1] == "--output_dir=gs://bkt/job/records"


@pytest.mark.parametrize("train, records, message", [
    (["--output_dir=gs://bkt/run", "--data_dir=gs://bkt/y"], "--instance_dir=gs://bkt/d --instance_prompt=p --output_dir=gs://bkt/x",
     r"--output_dir=gs://bkt/x in --make_tfrecords and --data_dir=gs://bkt/y after -- must be the same folder"),
    (["--output_dir=gs://bkt/run"], "--instance_dir=gs://bkt/d --instance_prompt=p", r"where do the records go\?"),
    (["--output_dir=gs://bkt/run"], "--instance_dir=photos/dog --instance_prompt=p --output_dir=gs://bkt/x",
     r"--instance_dir \(in --make_tfrecords\)='photos/dog' must be a gs://BUCKET/PATH"),
    (["--output_dir=gs://bkt/run"], "", r"--data_dir=gs://... is required after --"),
])
def test_records_folder_errors(train, records, message):
    with pytest.raises(app.UsageError, match=message):
        dbdist_run(GPU, train + ["--global_batch_size=2"], records)


# --- Vertex AI's AIP_* folders ------------------------------------------------------------------------

AIP = {"AIP_MODEL_DIR": "gs://bkt/job/model/", "AIP_CHECKPOINT_DIR": "gs://bkt/job/checkpoints/",
       "AIP_TENSORBOARD_LOG_DIR": "gs://bkt/job/logs/"}


def test_vertex_output_dir_is_the_folder_of_the_aip_dirs():
    assert cloud_env.vertex_output_dir(AIP) == "gs://bkt/job"
    assert cloud_env.vertex_output_dir({"AIP_CHECKPOINT_DIR": "gs://bkt/job/checkpoints"}) == "gs://bkt/job"
    assert cloud_env.vertex_output_dir({}) is None
    with pytest.raises(ValueError, match="different parents"):
        cloud_env.vertex_output_dir({**AIP, "AIP_MODEL_DIR": "gs://bkt/other/model/"})


def test_explicit_output_dir_wins_over_aip():
    registry = flags.FlagValues()
    flags.DEFINE_string("output_dir", None, "", flag_values=registry)
    registry(["train"])
    cloud_env.default_output_dir(registry, AIP)
    assert registry.output_dir == "gs://bkt/job"
    registry.output_dir = "gs://bkt/mine"
    cloud_env.default_output_dir(registry, AIP)
    assert registry.output_dir == "gs://bkt/mine"


# --- launch.stages (what runs on the machines) -----------------------------------------------------------

def test_stage_arguments():
    assert stages.split_stages(["--a=1", "--", "--b", "2"]) == (["--a=1"], ["--b", "2"])
    assert stages.flag_value(["--data_dir", "gs://x", "--data_dir=gs://y"], "data_dir") == "gs://y"
    assert stages.flag_value(["--data_dirs=gs://x"], "data_dir") is None


@pytest.mark.parametrize("manifest_there", [True, False])
def test_stages_make_records_once_then_become_train(monkeypatch, manifest_there):
    ran, checks = [], iter([manifest_there, False, True])  # exists() at the start, then while waiting
    monkeypatch.setattr(stages, "_exists", lambda path: next(checks))
    monkeypatch.setattr(stages, "_run_forwarding_sigterm", lambda argv: ran.append(argv[1:]) or 0)
    monkeypatch.setattr(stages, "_POLL_SECONDS", 0)
    monkeypatch.setattr(stages.os, "execv", lambda path, argv: ran.append(argv[1:]))
    stages.main(["--instance_dir=gs://bkt/d", "--", "--data_dir=gs://bkt/rec", "--max_train_steps=5"])
    train = ["-m", "dbdist.train", "--data_dir=gs://bkt/rec", "--max_train_steps=5"]
    assert ran == ([train] if manifest_there else [["-m", "dbdist.make_tfrecords", "--instance_dir=gs://bkt/d"], train])


def test_stages_stop_when_make_tfrecords_fails(monkeypatch):
    monkeypatch.setattr(stages, "_exists", lambda path: False)
    monkeypatch.setattr(stages, "_run_forwarding_sigterm", lambda argv: 143)
    monkeypatch.setattr(stages.os, "execv", lambda *a: pytest.fail("train must not start"))
    assert stages.main(["--instance_dir=gs://bkt/d", "--", "--data_dir=gs://bkt/rec"]) == 143
