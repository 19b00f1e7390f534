"""The gcloud commands of a TPU VM run, as argv lists: pure functions, printed by --dry_run.

How TensorFlow uses a TPU VM decides the shape of the training command:

* one host (v4-8, v5litepod-1/4/8, v5p-8, v6e-1/4/8): the same command on every worker
  (`--worker=all`, here the one VM) with `--strategy=tpu --tpu=local` and the PJRT runtime's
  environment (the TPU is a local pluggable device: libtpu.so from the pinned libtpu package);
* a multi-host pod slice (v4-16, v5p-16, v5litepod-16, ...): TensorFlow is single-client. One
  process on worker 0 drives every host's TPUs through the TPU runtime the `-pod` software
  version starts on each worker: `--worker=0`, `--tpu=<the VM's name>`, TPU_LOAD_LIBRARY=0 (the
  client must not claim worker 0's chips itself). Running dbdist with --tpu=local on every host
  would start independent trainers, one per host, all writing the same output dir.

dbdist is installed on every worker either way (pip, from a wheel or a git ref), with the pins
of launch/tpu_runtimes.py, then TensorFlow's TPU build and its libtpu over dbdist's `tensorflow`.

The JAX engine (--engine=jax) is multi-controller: one process per host, every host the same
command (`--worker=all`, one host or a slice), `KERAS_BACKEND=jax` and `--strategy=data_parallel`
over every chip of the slice; on a slice `--jax_distributed` too: jax.distributed.initialize()
inside dbdist finds the other hosts.
It installs `jax[tpu]` (libtpu from PyPI) with dbdist and nothing over it: the `tensorflow` it
keeps is the CPU build that feeds tf.data.
"""

import dataclasses
import os
import posixpath
import re
import shlex

from absl import app

from launch.accelerators import TpuVmType
from launch.cloud_flags import check_project, check_service_account
from launch.run_args import DbdistRun, Placement
from launch.tpu_runtimes import (DEFAULT, JAX_ENGINE_ENV, JAX_TPU_VM, LIBTPU_PATH_VARIABLE, PJRT_DEVICE_ENV,
                                 POD_CLIENT_ENV)

JAX_STRATEGY = "data_parallel"  # the JAX engine's --strategy: a Mesh over every device of every host

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")


@dataclasses.dataclass(frozen=True)
class TpuVm:
    name: str
    zone: str
    project: str
    accelerator: TpuVmType
    runtime_version: str
    spot: bool = False
    service_account: str = ""
    engine: str = "tf"  # "tf" or "jax" (launch/tpu_runtimes.py ENGINES)

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise app.UsageError(f"--tpu_name={self.name!r} must be lowercase letters, digits and hyphens, "
                                 "starting with a letter (at most 63)")
        if not _ZONE.fullmatch(self.zone):
            raise app.UsageError(f"--zone={self.zone!r} is not a zone such as us-central2-b or europe-west4-a")
        check_project(self.project)
        check_service_account(self.service_account)

    def _gcloud(self, verb, *flags):
        return ["gcloud", "compute", "tpus", "tpu-vm", verb, self.name, f"--zone={self.zone}", f"--project={self.project}",
                *flags]

    def describe(self):
        return self._gcloud("describe", "--format=value(state,acceleratorType)")

    def describe_runtime(self):
        """Whether the zone offers the TPU software version (exit code 0), asked before creating."""
        return ["gcloud", "compute", "tpus", "tpu-vm", "versions", "describe", self.runtime_version,
                f"--zone={self.zone}", f"--project={self.project}"]

    def create(self):
        # Access is decided by the service account's IAM roles: the VM gets the broad scope
        # (it reads and writes gs:// for records, checkpoints and exports).
        return self._gcloud("create", f"--accelerator-type={self.accelerator.name}", f"--version={self.runtime_version}",
                            *([f"--service-account={self.service_account}"] if self.service_account else []),
                            f"--scopes={CLOUD_PLATFORM_SCOPE}", *(["--spot"] if self.spot else []))

    def delete(self):
        return self._gcloud("delete", "--quiet")

    def ssh(self, command, worker="all"):
        return self._gcloud("ssh", f"--worker={worker}", f"--command={command}")

    def scp_to_home(self, local_path):
        """Copies a local file into the home directory of every worker."""
        return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_path, f"{self.name}:", f"--zone={self.zone}",
                f"--project={self.project}", "--worker=all"]

    def placement(self):
        kind = f"{self.accelerator.name}, {'multi-host pod slice' if self.accelerator.multi_host else 'one host'}"
        if self.engine == "jax":
            # Every chip of every host is one JAX device of one mesh (v4/v5p megacore chips: one device each).
            # Several hosts: each process starts with jax.distributed.initialize(), which finds the others.
            also = (("jax_distributed", "--jax_distributed"),) if self.accelerator.multi_host else ()
            return Placement(platform=f"the TPU VM {self.name} ({kind}, JAX engine)", strategy=JAX_STRATEGY,
                             allowed=(JAX_STRATEGY,), replicas=self.accelerator.replicas, also=also)
        return Placement(platform=f"the TPU VM {self.name} ({kind})", strategy="tpu", allowed=("tpu",),
                         replicas=self.accelerator.replicas, tpu=self.name if self.accelerator.multi_host else "local")


def _pip_install(python, target, pins, tpu_build):
    """dbdist with the table's pins (its dependencies come with it), then dbdist itself again (a
    rebuilt wheel or a moved git ref keeps its version number), then TensorFlow's TPU build and its
    libtpu over the `tensorflow` that dbdist asked for: both are the `tensorflow` package, and the
    TPU one must be what is left."""
    pip = f"{python} -m pip install --quiet"
    return (f"{pip} {shlex.join([target, *pins])} && "
            f"{pip} --force-reinstall --no-deps {shlex.quote(target)} && "
            f"{pip} --force-reinstall --no-deps {shlex.join(tpu_build)}")


def _pip_install_jax(python, target, pins):
    """dbdist with the JAX table's pins (jax[tpu] brings jaxlib and libtpu from PyPI), then dbdist
    itself again (a rebuilt wheel keeps its version number). Nothing goes over it."""
    pip = f"{python} -m pip install --quiet"
    return f"{pip} {shlex.join([target, *pins])} && {pip} --force-reinstall --no-deps {shlex.quote(target)}"


def install_commands(vm, spec, python="python3"):
    """gcloud argvs that pip-install dbdist on every worker from `spec`: a wheel (local or gs://)
    or a git URL (git+https://github.com/ORG/dbdist@REF)."""
    pins = (*DEFAULT.dbdist_pins(), *(DEFAULT.pod_client if vm.accelerator.multi_host else ()))

    def pip_install(target):
        if vm.engine == "jax":
            return _pip_install_jax(python, target, JAX_TPU_VM.dbdist_pins())
        return _pip_install(python, target, pins, DEFAULT.tpu_build())

    if spec.startswith("git+"):
        return (tuple(vm.ssh(pip_install(spec))),)
    if spec.endswith(".whl"):
        wheel = posixpath.basename(spec)  # ssh commands start in the home directory
        if spec.startswith("gs://"):
            fetch = f"gcloud storage cp {shlex.quote(spec)} {shlex.quote(wheel)} && "
            return (tuple(vm.ssh(fetch + pip_install(wheel))),)
        if not os.path.isfile(spec):
            raise app.UsageError(f"--install={spec}: no such wheel here (build one with `python -m pip wheel --no-deps "
                                 "-w dist .`)")
        return tuple(vm.scp_to_home(spec)), tuple(vm.ssh(pip_install(wheel)))
    raise app.UsageError(f"--install={spec!r}: expected a wheel (dist/dbdist-0.1.0-py3-none-any.whl or gs://.../*.whl) "
                         "or a git URL (git+https://github.com/ORG/dbdist@REF)")


def run_command(vm, run: DbdistRun, python="python3"):
    """The gcloud ssh argv that runs dbdist (see the module docstring for the shapes)."""
    if vm.engine == "jax":
        env = [f"{k}={shlex.quote(v)}" for k, v in JAX_ENGINE_ENV.items()]
        return tuple(vm.ssh(" ".join([*env, shlex.join([python, *run.module_argv()])]), worker="all"))
    if vm.accelerator.multi_host:
        env = [f"{k}={shlex.quote(v)}" for k, v in POD_CLIENT_ENV.items()]
    else:
        # libtpu.so is where the pinned libtpu package put it (pip installs as the ssh user, under ~/.local).
        libtpu_path = f"$({shlex.quote(python)} -c 'import libtpu; print(libtpu.get_library_path())')"
        env = [*(f"{k}={shlex.quote(v)}" for k, v in PJRT_DEVICE_ENV.items()), f'{LIBTPU_PATH_VARIABLE}="{libtpu_path}"']
    command = " ".join([*env, shlex.join([python, *run.module_argv()])])
    return tuple(vm.ssh(command, worker="0" if vm.accelerator.multi_host else "all"))


@dataclasses.dataclass(frozen=True)
class TpuVmPlan:
    vm: TpuVm
    run: tuple  # the gcloud ssh argv that trains
    install: tuple = ()  # gcloud argvs that install dbdist on every worker
    create_if_missing: bool = False
    max_restarts: int = 0
    delete_after: bool = False

    def dry_run_text(self):
        """The commands in the order the launcher would run them, with when each one runs."""
        steps = [("Is the VM there, and is it READY? (state, accelerator type)", self.vm.describe())]
        if self.create_if_missing:
            steps.append(("Only if it is missing, or preempted: does the zone offer the TPU software version?",
                          self.vm.describe_runtime()))
            steps.append(("Then create it (a preempted TPU VM is deleted first):", self.vm.create()))
        for argv in self.install:
            steps.append(("Install dbdist on every worker:", argv))
        restarts = (f"; after a preemption (exit 143, lost ssh, VM not READY) the VM is recreated and this is run "
                    f"again, at most {self.max_restarts} time(s), and resumes from the newest checkpoint"
                    if self.max_restarts else "")
        whose = "every host's output (JAX: one process per host)" if self.vm.engine == "jax" else "the chief's output"
        steps.append((f"Train, streaming {whose}{restarts}:", self.run))
        if self.delete_after:
            steps.append(("Then (--delete_after), whatever the outcome:", self.vm.delete()))
        return "\n".join(f"# {i}. {comment}\n{shlex.join(argv)}" for i, (comment, argv) in enumerate(steps, 1))
