"""absl flags both launchers take (defined once: all commands share one flag registry)."""

import re

from absl import app, flags

from dbdist.flag_checks import require  # noqa: F401 (the launchers call cloud_flags.require)

flags.DEFINE_string("project", None, "Google Cloud project ID (required).")
flags.DEFINE_string(
    "accelerator_type", None,
    "launch.tpu_vm: the TPU VM accelerator type (v4-8, v5litepod-8, v5p-16, v6e-8, ...). "
    "launch.vertex_ai: the GPU or TPU on each machine (NVIDIA_L4, NVIDIA_TESLA_A100, NVIDIA_H100_80GB, TPU_V3, ...).")
SERVICE_ACCOUNT = flags.DEFINE_string(
    "service_account", "",
    "Service account the TPU VM / Vertex AI job runs as; it needs read/write access to the gs:// folders "
    "(default: the Compute Engine default service account / Vertex AI's custom code service agent).")
SPOT = flags.DEFINE_bool("spot", False, "Use Spot capacity (much cheaper, can be preempted at any time).")
MAKE_TFRECORDS = flags.DEFINE_string(
    "make_tfrecords", "",
    "Run `python -m dbdist.make_tfrecords` with these flags (one shell-quoted string) before training, on the "
    "same machines; its --output_dir is train's --data_dir. Complete records (manifest.json) are not made again.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check everything, print what would be run or submitted, and exit.")


_PROJECT_ID = re.compile(r"([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")


def check_project(project):
    if not _PROJECT_ID.fullmatch(project):
        raise app.UsageError(f"--project={project!r} is not a Google Cloud project ID (6-30 lowercase letters, digits, hyphens)")


def check_service_account(service_account):
    if service_account and "@" not in service_account:
        raise app.UsageError(f"--service_account={service_account!r} is not a service account e-mail")
