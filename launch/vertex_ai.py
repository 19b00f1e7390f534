"""python -m launch.vertex_ai: run dbdist as a Vertex AI CustomJob (GPUs, several machines, or a TPU).

How to run (see launch/README.md for the image, permissions and the other shapes):
  python -m launch.vertex_ai --project=P --region=us-central1 --machine_type=a2-highgpu-1g \\
      --accelerator_type=NVIDIA_TESLA_A100 --container_image=us-central1-docker.pkg.dev/P/dbdist/dbdist:0.1.0 \\
      --base_output_dir=gs://B/dog/run -- --model=sd-v1 --data_dir=gs://B/dog/records --max_train_steps=800
Everything after `--` goes to `python -m dbdist.train` in the container unchanged; the launcher adds
only --strategy (mirrored, multi_worker with --replica_count>1, or tpu). With no --output_dir the
run writes to --base_output_dir (checkpoints in AIP_CHECKPOINT_DIR). What to expect: the job's
console URL and how to follow its logs; `--dry_run` prints the CustomJob as JSON instead. Every flag
is checked before anything is submitted; google-cloud-aiplatform is needed only to submit.
"""

import json
import sys

from absl import app, flags, logging

from launch import cloud_flags
from launch.accelerators import vertex_machine
from launch.run_args import check_gcs_uri, dbdist_run
from launch.vertex_job import VertexJob

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cloud_flags)  # --help lists the shared flags too
flags.DEFINE_string("region", None, "Vertex AI region, e.g. us-central1 (where the quota for the machines is).")
flags.DEFINE_string("machine_type", None, "Machine of each replica: n1-standard-8, g2-standard-8, a2-highgpu-1g, "
                    "a3-highgpu-8g, cloud-tpu, ct5lp-hightpu-4t, ...")
flags.DEFINE_integer("accelerator_count", 0, "GPUs per machine (0: the number the machine type comes with, or 1 on n1).")
flags.DEFINE_integer("replica_count", 1, "Machines; more than one trains with --strategy=multi_worker.")
flags.DEFINE_string("container_image", None, "Image built from launch/Dockerfile, pushed to Artifact Registry.")
flags.DEFINE_string("base_output_dir", None, "gs:// folder of the job: checkpoints, export, TensorBoard (and records).")
flags.DEFINE_string("display_name", "dbdist-train", "Name of the CustomJob in the console.")
flags.DEFINE_bool("wait", False, "Wait for the job to end, logging its state (default: submit and return).")


def job_from_flags(train_args):
    """Checks every flag; returns (VertexJob, the CustomJob JSON). Nothing here talks to the cloud."""
    cloud_flags.require("project", "region", "machine_type", "container_image", "base_output_dir")
    cloud_flags.check_project(FLAGS.project)
    check_gcs_uri(FLAGS.base_output_dir, "--base_output_dir", "Vertex AI writes the checkpoints and exports there")
    try:
        machine = vertex_machine(FLAGS.machine_type, FLAGS.accelerator_type, FLAGS.accelerator_count)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    job = VertexJob(FLAGS.display_name, FLAGS.region, machine, FLAGS.replica_count, FLAGS.container_image,
                    FLAGS.base_output_dir, cloud_flags.SERVICE_ACCOUNT.value, cloud_flags.SPOT.value)
    run = dbdist_run(job.placement(), train_args, cloud_flags.MAKE_TFRECORDS.value,
                     default_records_dir=job.default_records_dir(), require_output_dir=False)
    return job, job.custom_job(run)


def _snake(key):
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def to_sdk(value):
    """The REST JSON with snake_case keys, as google-cloud-aiplatform's dicts spell the proto fields."""
    if isinstance(value, dict):
        return {_snake(k): to_sdk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_sdk(v) for v in value]
    return value


def submit(job, resource, project, wait):
    """Creates the CustomJob with google-cloud-aiplatform (imported only here). Returns the SDK job."""
    try:
        from google.cloud import aiplatform
        from google.cloud.aiplatform.compat.types import custom_job as custom_job_types
    except ImportError:
        raise app.UsageError("submitting needs google-cloud-aiplatform: pip install 'dbdist[launch]' "
                             "(--dry_run does not)") from None
    spec = resource["jobSpec"]
    from dbdist.gcs_paths import bucket_of  # loads TensorFlow: only when submitting

    bucket = "gs://" + bucket_of(job.base_output_dir)
    custom_job = aiplatform.CustomJob(
        display_name=resource["displayName"], worker_pool_specs=to_sdk(spec["workerPoolSpecs"]),
        base_output_dir=job.base_output_dir, project=project, location=job.region, staging_bucket=bucket)
    scheduling = spec.get("scheduling", {})
    options = dict(service_account=spec.get("serviceAccount"),
                   restart_job_on_worker_restart=scheduling.get("restartJobOnWorkerRestart", False))
    if scheduling.get("strategy"):
        options["scheduling_strategy"] = custom_job_types.Scheduling.Strategy[scheduling["strategy"]]
    if wait:
        custom_job.run(sync=True, **options)
    else:
        custom_job.submit(**options)
    return custom_job


def main(argv):
    job, resource = job_from_flags(argv[1:])
    if cloud_flags.DRY_RUN.value:
        print(f"# would create in projects/{FLAGS.project}/locations/{job.region}:", file=sys.stderr)
        print(json.dumps(resource, indent=2))
        return 0
    custom_job = submit(job, resource, FLAGS.project, FLAGS.wait)
    logging.info("submitted %s\nfollow its logs: gcloud ai custom-jobs stream-logs %s --region=%s",
                 custom_job.resource_name, custom_job.resource_name, job.region)
    return 0


if __name__ == "__main__":
    app.run(main)
