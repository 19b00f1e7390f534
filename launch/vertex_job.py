"""A Vertex AI CustomJob for dbdist, as the REST API's JSON: pure functions, printed by --dry_run.

The shapes, and the strategy each gives dbdist:

* one machine with GPUs (or CPU only): one worker pool, --strategy=mirrored over its GPUs;
* N machines (--replica_count=N): worker pool 0 holds the chief (Vertex requires exactly one
  replica there), pool 1 the N-1 other workers, same machine and container; Vertex AI sets
  TF_CONFIG on each (tests/distributed_runs.py `vertex_tf_config` mirrors it) and --strategy=multi_worker reads it. The chief
  (task "chief", index 0) writes logs, metrics and exports; workers write their share of each
  checkpoint to a scratch folder (dbdist.training.strategy.is_chief / worker_scratch_dir).
  `restartJobOnWorkerRestart` restarts every replica when one restarts, since a collective
  all-reduce cannot take a worker back mid-run: they all resume from the newest checkpoint;
* one TPU machine (cloud-tpu v2/v3, ct5lp-hightpu-* v5e): --strategy=tpu --tpu=local.

`baseOutputDirectory` makes Vertex AI set AIP_CHECKPOINT_DIR (and _MODEL_DIR, _TENSORBOARD_LOG_DIR)
on every replica; dbdist.train uses their folder when no --output_dir is given
(dbdist/training/cloud_env.py). The JSON is also what `gcloud ai custom-jobs create --config`
takes as a CustomJobSpec (its "jobSpec" part).
"""

import dataclasses
import re

from absl import app

from launch.accelerators import VertexMachine
from launch.cloud_flags import check_service_account
from launch.run_args import DbdistRun, Placement
from launch.tpu_runtimes import CONTAINER_LIBTPU, LIBTPU_PATH_VARIABLE, PJRT_DEVICE_ENV

# The image's tpu target (launch/Dockerfile) puts the pinned libtpu's libtpu.so in /lib.
CONTAINER_TPU_ENV = {**PJRT_DEVICE_ENV, LIBTPU_PATH_VARIABLE: CONTAINER_LIBTPU}

_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?/[^\s:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})?")
CONTAINER_PYTHON = "python"  # the image's interpreter (launch/Dockerfile)


@dataclasses.dataclass(frozen=True)
class VertexJob:
    display_name: str
    region: str
    machine: VertexMachine
    replica_count: int
    container_image: str
    base_output_dir: str
    service_account: str = ""
    spot: bool = False

    def __post_init__(self):
        if not _REGION.fullmatch(self.region):
            raise app.UsageError(f"--region={self.region!r} is not a region such as us-central1 or europe-west4")
        if self.replica_count < 1:
            raise app.UsageError(f"--replica_count must be >= 1, got {self.replica_count}")
        if self.machine.kind == "tpu" and self.replica_count != 1:
            raise app.UsageError(f"--replica_count={self.replica_count}: a Vertex AI TPU job here is one "
                                 f"{self.machine.machine_type} machine; for TPU pod slices use `python -m launch.tpu_vm`")
        if not _IMAGE.fullmatch(self.container_image):
            raise app.UsageError(f"--container_image={self.container_image!r} is not an image URI such as "
                                 "us-central1-docker.pkg.dev/PROJECT/REPO/dbdist:TAG")
        check_service_account(self.service_account)
        if not 0 < len(self.display_name) <= 128:
            raise app.UsageError(f"--display_name must have 1 to 128 characters, got {self.display_name!r}")

    def placement(self):
        shape = f"{self.replica_count} x {self.machine.machine_type}"
        if self.machine.accelerator_type:
            shape += f" with {self.machine.accelerator_count} x {self.machine.accelerator_type}"
        platform = f"Vertex AI ({shape})"
        if self.machine.kind == "tpu":
            return Placement(platform, "tpu", ("tpu",), self.machine.replicas, tpu="local")
        if self.replica_count > 1:
            return Placement(platform, "multi_worker", ("multi_worker",), self.machine.replicas * self.replica_count)
        return Placement(platform, "mirrored", ("mirrored", "one_device"), self.machine.replicas)

    def default_records_dir(self):
        return f"{self.base_output_dir.rstrip('/')}/records"

    def custom_job(self, run: DbdistRun):
        """The CustomJob resource (displayName + jobSpec) in the REST API's camelCase JSON."""
        module_argv = run.module_argv()  # ["-m", MODULE, *args]
        container = {"imageUri": self.container_image, "command": [CONTAINER_PYTHON, *module_argv[:2]],
                     "args": list(module_argv[2:])}
        if self.machine.kind == "tpu":
            container["env"] = [{"name": k, "value": v} for k, v in CONTAINER_TPU_ENV.items()]
        pool = {"machineSpec": self.machine.machine_spec(), "replicaCount": 1, "containerSpec": container}
        pools = [pool] + ([{**pool, "replicaCount": self.replica_count - 1}] if self.replica_count > 1 else [])
        spec = {"workerPoolSpecs": pools, "baseOutputDirectory": {"outputUriPrefix": self.base_output_dir}}
        if self.service_account:
            spec["serviceAccount"] = self.service_account
        scheduling = {}
        if self.replica_count > 1:
            scheduling["restartJobOnWorkerRestart"] = True
        if self.spot:
            scheduling["strategy"] = "SPOT"
        if scheduling:
            spec["scheduling"] = scheduling
        return {"displayName": self.display_name, "jobSpec": spec}
