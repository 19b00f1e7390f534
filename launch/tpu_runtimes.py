"""The software dbdist runs with on a TPU, per engine: one table each, each fact with its source.

The TensorFlow engine's table comes first; the JAX engine's (`JAX_TPU_VM`, `JAX_CONTAINER`) is at
the end of this docstring and of the module.

launch.tpu_vm takes the TPU software version it creates VMs with and the packages it installs on
them from here; launch/Dockerfile's tpu target installs the same pins (tests/test_tpu_runtimes.py
holds the two together, and checks that the pins resolve on PyPI); launch/README.md shows it.
`python -m launch.tpu_runtimes` prints it.

What the table rests on (read 2026-11-30; "index" is PyPI, as `pip index versions` and the
wheels' METADATA show it):

* TensorFlow's TPU build ends at tensorflow-tpu 2.20.0 (index:
  https://pypi.org/project/tensorflow-tpu/#history). Its cp310 wheel requires
  libtpu~=0.0.14, keras>=3.10.0 and tensorboard~=2.20.0. From 2.19 the TPU build takes libtpu from
  PyPI (2.19.1: libtpu==0.0.10); up to 2.18 it took `libtpu==2.18.0` from Google's own
  libtpu-tf-releases index, and Google's TensorFlow/libtpu.so table stops there
  (2.18.0 <-> libtpu.so 1.12.0, https://cloud.google.com/tpu/docs/runtimes).
* libtpu 0.0.14 (https://pypi.org/project/libtpu/0.0.14/): the lowest libtpu tensorflow-tpu 2.20.0
  accepts, and the one it names; pinned exactly, because Google documents one libtpu per
  TensorFlow release and libtpu's newer releases follow JAX's. Its wheel is
  py3-none-manylinux_2_31_x86_64 and holds libtpu/libtpu.so (libtpu.get_library_path()), the
  PJRT plugin TensorFlow loads from TF_PLUGGABLE_DEVICE_LIBRARY_PATH (tensorflow/__init__.py).
* Python 3.10: what TPU VM images run (Ubuntu 22.04's python3; "v4 and older:
  tpu-ubuntu2204-base" on the runtimes page). keras 3.13 and newer require Python >= 3.11
  (https://pypi.org/project/keras/3.13.0/), so the TPU route pins keras 3.12.4, the newest keras
  for Python 3.10 (https://pypi.org/project/keras/3.12.4/: Requires-Python >=3.10), and installs
  into the image's own python3: no second interpreter to fetch from outside PyPI.
  keras-cv 0.9.0 (https://pypi.org/project/keras-cv/0.9.0/) and tensorboard 2.20.0 (the one
  tensorflow-tpu 2.20.0 takes) complete it. dbdist's fast test tier passes on exactly this set
  (see launch/README.md, "TensorFlow on the TPU").
* One host: TensorFlow with PJRT needs only libtpu.so, so the VM starts from Google's base
  software version for its TPU generation, the one Google gives for frameworks you install
  yourself (https://cloud.google.com/tpu/docs/runtimes, "PyTorch and JAX": v6e
  v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older
  tpu-ubuntu2204-base), and the launcher pip-installs the pins below.
* A pod slice: TensorFlow drives it as one client through the TPU runtime that the
  `tpu-vm-tf-X.Y.Z-pod-pjrt` software version starts on every worker (naming:
  https://cloud.google.com/tpu/docs/runtimes, "TensorFlow"; multi-host: "Run TensorFlow code on
  TPU slices"). No Google page lists tpu-vm-tf-2.20.0-pod-pjrt: the launcher asks the zone
  (`gcloud compute tpus tpu-vm versions describe`) before it creates one.
  The client finds the workers through the Cloud TPU API with TensorFlow's client, which needs
  google-api-python-client and oauth2client (tensorflow/python/tpu/client/client.py).

The JAX engine (`launch.tpu_vm --engine=jax`; read 2026-11-30):

* Google's route for JAX on TPU VMs: the same base software versions as above ("PyTorch and JAX":
  v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older
  tpu-ubuntu2204-base, https://cloud.google.com/tpu/docs/runtimes), for one host and for pod
  slices alike ("Run JAX code on TPU slices" creates a v5litepod-32 with v2-alpha-tpuv5-lite and
  a v5p-32 with v2-alpha-tpuv5, https://cloud.google.com/tpu/docs/jax-pods), then
  `pip install -U "jax[tpu]"` (https://docs.jax.dev/en/latest/installation.html, "TPU (Google
  Cloud TPU VM)"), run on every worker (`gcloud compute tpus tpu-vm ssh ... --worker=all
  --command=...`, jax-pods): JAX is multi-controller, one process per host, and
  jax.distributed.initialize() finds the other hosts itself on a TPU slice.
* Which JAX: the images' python3 is 3.10 (above), and JAX 0.6.2 is the newest JAX for it
  (jax-0.6.2 METADATA: Requires-Python >=3.10; jax 0.7.0: >=3.11; https://pypi.org/project/jax/0.6.2/,
  https://pypi.org/project/jax/0.7.0/). Its `tpu` extra pins jaxlib 0.6.2 and libtpu==0.0.17.*,
  both from PyPI, no other index (libtpu 0.0.17: py3-none-manylinux_2_31_x86_64,
  https://pypi.org/project/libtpu/0.0.17/). Keras 3.12.4 and TensorFlow 2.20.0 (the CPU build, for
  the input pipeline's tf.data and gs://; it leaves the TPU to JAX) as for the TensorFlow engine.
  dbdist's own JAX floor is 0.6.2 (pyproject.toml's test extra), tested there with TensorFlow 2.20
  on Python 3.10 (README's version table). Checked with pip's resolver for CPython 3.10 on
  manylinux x86_64 (`pip install --dry-run --python-version 3.10 --only-binary=:all:`): jax 0.6.2,
  jaxlib 0.6.2, libtpu 0.0.17, keras 3.12.4, optax 0.2.8, orbax-checkpoint 0.11.39 (0.12 needs
  Python >= 3.11), numpy 2.2.6.
* The container (launch/Dockerfile's tpu-jax target, Vertex AI TPU machines) is free to choose
  its Python: python:3.11-slim with constraints.txt's tested JAX 0.10.2 (its `tpu` extra: libtpu
  0.0.42.*), Keras 3.15.1 and TensorFlow 2.21.0.
"""

import dataclasses
import re

from launch.accelerators import TpuVmType

RUNTIMES_PAGE = "https://cloud.google.com/tpu/docs/runtimes"
# TensorFlow's PJRT TPU device: the environment Google's TensorFlow-on-TPU-VM instructions set.
PJRT_DEVICE_ENV = {"NEXT_PLUGGABLE_DEVICE_USE_C_API": "true"}
LIBTPU_PATH_VARIABLE = "TF_PLUGGABLE_DEVICE_LIBRARY_PATH"
# Where launch/Dockerfile's tpu target puts libtpu.so (a VM reads it from the libtpu package instead).
CONTAINER_LIBTPU = "/lib/libtpu.so"
# The single client of a pod slice talks to the TPU runtime on every worker instead of loading libtpu.
POD_CLIENT_ENV = {"TPU_LOAD_LIBRARY": "0"}


@dataclasses.dataclass(frozen=True)
class TpuStack:
    """One supported combination: TensorFlow's TPU build, its libtpu, the Python packages around
    it, the interpreter they install into, and the TPU software versions of the VMs."""

    tensorflow: str  # tensorflow-tpu's version; dbdist's `tensorflow` is pinned to the same
    libtpu: str
    keras: str
    keras_cv: str
    tensorboard: str
    python: str  # the image's python3 (TPU VM) and the container's (launch/Dockerfile)
    single_host: dict  # TPU family -> software version of a one-host VM
    pod_slice: str  # software version of a multi-host slice
    pod_client: tuple  # what TensorFlow's Cloud TPU API client imports, for --tpu=NAME
    sources: dict  # what -> where it was read

    def dbdist_pins(self):
        """Installed with dbdist: they pin what dbdist's own requirements leave open."""
        return (f"tensorflow=={self.tensorflow}", f"tensorboard=={self.tensorboard}", f"keras=={self.keras}",
                f"keras-cv=={self.keras_cv}")

    def tpu_build(self):
        """Installed over dbdist's `tensorflow` (--force-reinstall --no-deps): both ship the
        `tensorflow` package, and the TPU build must be the one left."""
        return (f"tensorflow-tpu=={self.tensorflow}", f"libtpu=={self.libtpu}")

    def runtime_for(self, accelerator: TpuVmType):
        return self.pod_slice if accelerator.multi_host else self.single_host[accelerator.family.name]

    def runtimes(self):
        return (*dict.fromkeys(self.single_host.values()), self.pod_slice)


TF_2_20 = TpuStack(
    tensorflow="2.20.0",
    libtpu="0.0.14",
    keras="3.12.4",
    keras_cv="0.9.0",
    tensorboard="2.20.0",
    python="3.10",
    single_host={"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                 "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"},
    pod_slice="tpu-vm-tf-2.20.0-pod-pjrt",
    pod_client=("google-api-python-client==2.202.0", "oauth2client==4.1.3"),
    sources={
        "tensorflow-tpu 2.20.0 (the last TPU build; cp310 wheel; needs libtpu~=0.0.14, keras>=3.10.0, "
        "tensorboard~=2.20.0)": "https://pypi.org/project/tensorflow-tpu/2.20.0/",
        "libtpu 0.0.14 (py3, manylinux_2_31_x86_64)": "https://pypi.org/project/libtpu/0.0.14/",
        "keras 3.12.4 (Requires-Python >=3.10; keras 3.13+ need >=3.11)": "https://pypi.org/project/keras/3.12.4/",
        "keras-cv 0.9.0": "https://pypi.org/project/keras-cv/0.9.0/",
        "Python 3.10 (Ubuntu 22.04 TPU VM images)": RUNTIMES_PAGE,
        "one host: v2-alpha-tpuv6e / v2-alpha-tpuv5 / v2-alpha-tpuv5-lite / tpu-ubuntu2204-base": RUNTIMES_PAGE,
        "pod slice: tpu-vm-tf-X.Y.Z-pod-pjrt (naming; 2.20.0 itself is asked of the zone)": RUNTIMES_PAGE,
    },
)
STACKS = (TF_2_20,)
DEFAULT = TF_2_20

# Software versions people reach for that cannot run this dbdist, and why (checked before any gcloud call).
_TF_RUNTIME = re.compile(r"tpu-vm-tf-(\d+\.\d+\.\d+)(-pod)?(-pjrt|-se)?(-.+)?")


def _why_not(runtime):
    match = _TF_RUNTIME.fullmatch(runtime)
    if not match:
        return "it is not in dbdist's table of TPU software"
    version = match.group(1)
    if tuple(map(int, version.split("."))) > tuple(map(int, DEFAULT.tensorflow.split("."))):
        return (f"TensorFlow's TPU build stops at tensorflow-tpu {DEFAULT.tensorflow} "
                "(https://pypi.org/project/tensorflow-tpu/#history): there is no TensorFlow "
                f"{version} for TPUs to run")
    return (f"it carries TensorFlow {version} on Python {DEFAULT.python}, and dbdist runs on TPUs with "
            f"tensorflow-tpu {DEFAULT.tensorflow} and keras {DEFAULT.keras} only (the newest keras that installs on "
            f"Python {DEFAULT.python}); an older TensorFlow would replace neither")


def choose_runtime(accelerator: TpuVmType, runtime_version=""):
    """The TPU software version for `accelerator`: the table's, or `runtime_version` if the table
    has it for that shape. Raises ValueError naming the supported choices."""
    expected = DEFAULT.runtime_for(accelerator)
    if not runtime_version or runtime_version == expected:
        return expected
    shape = "a multi-host pod slice" if accelerator.multi_host else f"one {accelerator.family.name} host"
    if runtime_version in DEFAULT.runtimes():
        why = f"it is the software version for other TPU shapes; {accelerator.name} is {shape}"
    else:
        why = _why_not(runtime_version)
    raise ValueError(f"--runtime_version={runtime_version!r} cannot run dbdist on {accelerator.name}: {why}. "
                     f"Supported for {accelerator.name}: {expected} (the default; leave --runtime_version out). "
                     f"All supported: {describe_table()}")


def describe_table():
    stack = DEFAULT
    hosts = ", ".join(f"{family}: {runtime}" for family, runtime in stack.single_host.items())
    return (f"tensorflow-tpu {stack.tensorflow} + libtpu {stack.libtpu}, keras {stack.keras}, keras-cv {stack.keras_cv}, "
            f"Python {stack.python}; one host ({hosts}); pod slices: {stack.pod_slice}")


def _print_tables():
    for stack in STACKS:
        print(describe_table())
        print("pip install <dbdist>", *stack.dbdist_pins())
        print("pip install --force-reinstall --no-deps", *stack.tpu_build())
        print("pod slices also:", *stack.pod_client)
        for what, where in stack.sources.items():
            print(f"  {what}: {where}")
    for name, stack in (("TPU VMs", JAX_TPU_VM), ("the tpu-jax container", JAX_CONTAINER)):
        print(f"JAX engine on {name}: Python {stack.python};", "pip install <dbdist>", *stack.dbdist_pins())
        for what, where in stack.sources.items():
            print(f"  {what}: {where}")


# --- the JAX engine -------------------------------------------------------------------------------

JAX_DOCS = "https://docs.jax.dev/en/latest/installation.html"
JAX_PODS_PAGE = "https://cloud.google.com/tpu/docs/jax-pods"
# Set before Keras is imported: dbdist.train then runs the JAX engine (dbdist/jax_engine/).
JAX_ENGINE_ENV = {"KERAS_BACKEND": "jax"}


@dataclasses.dataclass(frozen=True)
class JaxTpuStack:
    """The JAX engine on TPUs: jax[tpu] (libtpu from PyPI), the Python packages around it, the
    interpreter, and the base TPU software version of each family (one host and slices alike)."""

    jax: str
    optax: str
    orbax_checkpoint: str
    libtpu: str  # what jax[tpu]==jax pins; pip takes it with the extra, it is not pinned again
    keras: str
    tensorflow: str  # the CPU build: the input pipeline (tf.data, gs://), never the TPU
    tensorboard: str
    keras_cv: str
    python: str
    runtimes: dict  # TPU family -> software version
    sources: dict

    def dbdist_pins(self):
        # jax[tpu], optax and orbax-checkpoint are pyproject.toml's `jax` extra, pinned.
        return (f"jax[tpu]=={self.jax}", f"optax=={self.optax}", f"orbax-checkpoint=={self.orbax_checkpoint}",
                f"tensorflow=={self.tensorflow}", f"tensorboard=={self.tensorboard}", f"keras=={self.keras}",
                f"keras-cv=={self.keras_cv}")

    def runtime_for(self, accelerator: TpuVmType):
        return self.runtimes[accelerator.family.name]


JAX_TPU_VM = JaxTpuStack(
    jax="0.6.2",
    optax="0.2.8",
    orbax_checkpoint="0.11.39",  # the newest for Python 3.10 (0.12 needs 3.11); not tested here
    libtpu="0.0.17.*",
    keras="3.12.4",
    tensorflow="2.20.0",
    tensorboard="2.20.0",
    keras_cv="0.9.0",
    python="3.10",
    runtimes=dict(TF_2_20.single_host),
    sources={
        'pip install -U "jax[tpu]" (libtpu from PyPI)': JAX_DOCS,
        "jax 0.6.2: the newest JAX for Python 3.10 (0.7.0 needs >=3.11); jax[tpu] pins libtpu==0.0.17.*":
            "https://pypi.org/project/jax/0.6.2/",
        "base software versions for JAX: v2-alpha-tpuv6e / v2-alpha-tpuv5 / v2-alpha-tpuv5-lite / "
        "tpu-ubuntu2204-base": RUNTIMES_PAGE,
        "slices: the same base versions, the same command on every worker (--worker=all)": JAX_PODS_PAGE,
        "keras 3.12.4 (Requires-Python >=3.10)": "https://pypi.org/project/keras/3.12.4/",
        "orbax-checkpoint 0.11.39: the newest for Python 3.10": "https://pypi.org/project/orbax-checkpoint/0.11.39/",
    },
)
# launch/Dockerfile's tpu-jax target: its own Python, so constraints.txt's tested versions.
JAX_CONTAINER = JaxTpuStack(
    jax="0.10.2",
    optax="0.2.8",
    orbax_checkpoint="0.12.8",
    libtpu="0.0.42.*",
    keras="3.15.1",
    tensorflow="2.21.0",
    tensorboard="2.21.0",
    keras_cv="0.9.0",
    python="3.11",
    runtimes={},
    sources={"jax 0.10.2 (Requires-Python >=3.11; jax[tpu] pins libtpu==0.0.42.*)": "https://pypi.org/project/jax/0.10.2/"},
)
ENGINES = ("tf", "jax")


def choose_runtime_for_engine(accelerator: TpuVmType, runtime_version="", engine="tf"):
    """choose_runtime for the engine: the JAX engine runs on the base software versions only."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {ENGINES}, got {engine!r}")
    if engine == "tf":
        return choose_runtime(accelerator, runtime_version)
    expected = JAX_TPU_VM.runtime_for(accelerator)
    if not runtime_version or runtime_version == expected:
        return expected
    if runtime_version in JAX_TPU_VM.runtimes.values():
        why = f"it is the base software version of other TPU generations, not of {accelerator.family.name}"
    elif _TF_RUNTIME.fullmatch(runtime_version):
        why = ("it is a TensorFlow TPU software version (for --engine=tf); JAX installs itself with libtpu on "
               "Google's base software versions")
    else:
        why = "it is not in dbdist's table of TPU software"
    raise ValueError(f"--runtime_version={runtime_version!r} cannot run dbdist's JAX engine on {accelerator.name}: "
                     f"{why}. Supported for {accelerator.name}: {expected} (the default; leave --runtime_version out)")


if __name__ == "__main__":
    _print_tables()
