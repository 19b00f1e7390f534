"""python -m launch.tpu_vm: run dbdist on a Cloud TPU VM (one host or a pod slice) with gcloud.

How to run (see launch/README.md for the set-up and the other shapes):
  python -m launch.tpu_vm --project=P --zone=us-central2-b --tpu_name=db-v4 --accelerator_type=v4-8 \\
      --create --install=dist/dbdist-0.1.0-py3-none-any.whl --spot --max_restarts=5 --delete_after -- \\
      --model=sd-v1 --data_dir=gs://B/dog/records --output_dir=gs://B/dog/run --max_train_steps=800 \\
      --global_batch_size=4
Everything after `--` goes to `python -m dbdist.train` unchanged; the launcher adds only
--strategy=tpu and --tpu (--engine=jax: KERAS_BACKEND=jax and --strategy=data_parallel, on every host). What to expect: the gcloud calls of `--dry_run` (describe, create if
missing, install, ssh, delete), then the chief's training log streamed here; checkpoints and the
export in --output_dir on gs://. A preempted run is relaunched on a recreated VM and resumes.
Every flag is checked before the first gcloud call; a bad one stops here and creates nothing.
"""

import subprocess
import time

from absl import app, flags, logging

from dbdist.training.preemption import PREEMPTED_EXIT_CODE
from launch import cloud_flags
from launch.accelerators import tpu_vm_type
from launch.run_args import dbdist_run
from launch.tpu_runtimes import ENGINES, choose_runtime_for_engine
from launch.tpu_vm_plan import TpuVm, TpuVmPlan, install_commands, run_command

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cloud_flags)  # --help lists the shared flags too
flags.DEFINE_string("tpu_name", None, "Name of the TPU VM (created with --create when missing).")
flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p).")
flags.DEFINE_string("runtime_version", "", "TPU software version (default: the one launch/tpu_runtimes.py gives for "
                    "--accelerator_type; any other is refused).")
flags.DEFINE_bool("create", False, "Create the TPU VM when it is missing, or re-create it when it was preempted.")
flags.DEFINE_string("install", "", "pip-install dbdist on every worker from a wheel (local or gs://) or a git URL "
                    "(git+https://github.com/ORG/dbdist@REF).")
flags.DEFINE_integer("max_restarts", 0, "Relaunch after a preemption up to this many times (needs --create and --install).")
flags.DEFINE_bool("delete_after", False, "Delete the TPU VM when the run ends (success or not).")
flags.DEFINE_string("remote_python", "python3", "The Python interpreter on the workers.")
# dbdist.train defines --engine too (the same values, default None): a process that imports both
# (the tests) must define it once, so here it is defined only if absent, and None means tf.
if "engine" not in flags.FLAGS:
    flags.DEFINE_enum("engine", None, ENGINES, "tf (default): TensorFlow's TPU build, one client (worker 0 on a slice). "
                      "jax: the JAX engine (KERAS_BACKEND=jax, jax[tpu] with libtpu from PyPI), one process on every host.")


def _engine():
    return FLAGS.engine or "tf"

SSH_LOST_EXIT_CODE = 255  # ssh's code when the connection drops, as when the VM goes away
READY = "READY"
RECREATE_STATES = ("PREEMPTED", "TERMINATED", "STOPPED")  # Spot and preemptible TPUs cannot be restarted
_WAIT_SECONDS, _WAIT_TRIES = 30, 40  # for transitional states (CREATING, REPAIRING, ...)


def plan_from_flags(train_args):
    """Checks every flag and builds the plan; nothing here talks to the cloud."""
    cloud_flags.require("project", "zone", "tpu_name", "accelerator_type")
    try:
        accelerator = tpu_vm_type(FLAGS.accelerator_type)
        runtime = choose_runtime_for_engine(accelerator, FLAGS.runtime_version, _engine())
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    vm = TpuVm(FLAGS.tpu_name, FLAGS.zone, FLAGS.project, accelerator, runtime, FLAGS.spot,
               cloud_flags.SERVICE_ACCOUNT.value, _engine())
    if _engine() == "jax" and cloud_flags.MAKE_TFRECORDS.value.strip():
        # make_tfrecords is a TensorFlow command (strategies, the VAE and text encoder): the JAX
        # install has no TensorFlow TPU build to run it on, and every host would write the records.
        raise app.UsageError("--make_tfrecords runs with TensorFlow, which --engine=jax does not install for the TPU: "
                             "make the records first (the same launcher with --engine=tf, or on a GPU/CPU machine), "
                             "then train with --engine=jax and --data_dir=gs://...")
    if FLAGS.max_restarts < 0:
        raise app.UsageError(f"--max_restarts must be >= 0, got {FLAGS.max_restarts}")
    if FLAGS.max_restarts and not (FLAGS.create and FLAGS.install):
        raise app.UsageError(f"--max_restarts={FLAGS.max_restarts} relaunches on a re-created VM after a preemption: "
                             "it needs --create and --install")
    run = dbdist_run(vm.placement(), train_args, cloud_flags.MAKE_TFRECORDS.value)
    return TpuVmPlan(
        vm=vm,
        run=run_command(vm, run, FLAGS.remote_python),
        install=install_commands(vm, FLAGS.install, FLAGS.remote_python) if FLAGS.install else (),
        create_if_missing=FLAGS.create,
        max_restarts=FLAGS.max_restarts,
        delete_after=FLAGS.delete_after,
    )


def _gcloud(argv, capture=False):
    logging.info("running: %s", " ".join(argv[:6]) + " ...")
    return subprocess.run(argv, capture_output=capture, text=True)


def vm_state(vm):
    """(state, accelerator type) of the VM, or (None, None) when there is none."""
    result = _gcloud(vm.describe(), capture=True)
    if result.returncode:
        if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
            return None, None
        raise RuntimeError(f"`gcloud compute tpus tpu-vm describe {vm.name}` failed:\n{result.stderr.strip()}")
    fields = result.stdout.split()
    return (fields + [None, None])[:2]


def check_runtime_offered(vm):
    """Stops before `create` when the zone does not offer the VM's TPU software version (not every
    version is in every zone, and no Google page lists every one)."""
    result = _gcloud(vm.describe_runtime(), capture=True)
    if result.returncode:
        raise app.UsageError(f"the zone {vm.zone} does not offer the TPU software version {vm.runtime_version} that "
                             f"{vm.accelerator.name} needs ({result.stderr.strip()[-300:]}); see what it offers with "
                             f"`gcloud compute tpus tpu-vm versions list --zone={vm.zone}`, or pick another zone")


def _check(result, what):
    if result.returncode:
        raise RuntimeError(f"{what} failed with exit code {result.returncode}; see gcloud's output above")


class TpuVmRun:
    """One launch: keeps the VM READY with dbdist, runs the training command, relaunches it."""

    def __init__(self, plan):
        self.plan = plan
        self.vm_is_ours = False  # created here, or used by a run that started: --delete_after may delete it

    def ensure_ready(self, install):
        """Makes the VM READY with dbdist installed: creates or re-creates it if needed (--create)."""
        plan, vm = self.plan, self.plan.vm
        for _ in range(_WAIT_TRIES):
            state, accelerator = vm_state(vm)
            if state == READY:
                if accelerator and accelerator != vm.accelerator.name:
                    raise app.UsageError(f"the TPU VM {vm.name} exists as {accelerator}, not --accelerator_type="
                                         f"{vm.accelerator.name}; use that type or another --tpu_name")
                break
            if state is None or state in RECREATE_STATES:
                what = "does not exist" if state is None else f"is {state}"
                if not plan.create_if_missing:
                    raise app.UsageError(f"the TPU VM {vm.name} {what} in {vm.zone}; pass --create to create it")
                if not plan.install:
                    raise app.UsageError(f"the TPU VM {vm.name} {what}: a new VM has no dbdist, pass --install too")
                check_runtime_offered(vm)
                if state is not None:
                    _check(_gcloud(vm.delete()), f"deleting the {state} TPU VM {vm.name}")
                self.vm_is_ours = True
                _check(_gcloud(vm.create()), f"creating the TPU VM {vm.name}")
                install = True
                continue
            logging.info("TPU VM %s is %s; waiting %d s", vm.name, state, _WAIT_SECONDS)
            time.sleep(_WAIT_SECONDS)
        else:
            raise RuntimeError(f"the TPU VM {vm.name} did not become READY")
        self.vm_is_ours = True
        if install:
            for argv in plan.install:
                _check(_gcloud(argv), "installing dbdist on the workers")

    def execute(self):
        """Returns the exit code of the training command (0 when it finished)."""
        plan = self.plan
        try:
            self.ensure_ready(install=True)
            for attempt in range(plan.max_restarts + 1):
                code = _gcloud(list(plan.run)).returncode
                if code == 0:
                    return 0
                state, _ = vm_state(plan.vm)
                preempted = code in (PREEMPTED_EXIT_CODE, SSH_LOST_EXIT_CODE) or state != READY
                if not preempted or attempt == plan.max_restarts:
                    logging.error("training ended with exit code %d (VM %s)%s", code, state,
                                  "; no relaunch left (--max_restarts)" if preempted else "")
                    return code
                logging.warning("preempted (exit code %d, VM %s): relaunch %d of %d, resuming from the newest "
                                "checkpoint", code, state, attempt + 1, plan.max_restarts)
                self.ensure_ready(install=False)
        finally:
            if plan.delete_after and self.vm_is_ours:
                _gcloud(plan.vm.delete())


def main(argv):
    plan = plan_from_flags(argv[1:])
    if cloud_flags.DRY_RUN.value:
        print(plan.dry_run_text())
        return 0
    try:
        return TpuVmRun(plan).execute()
    except RuntimeError as err:
        logging.error("%s", err)
        return 1


if __name__ == "__main__":
    app.run(main)
