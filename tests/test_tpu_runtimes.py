"""launch/tpu_runtimes.py: the TPU software table, the choices it refuses, the Dockerfile and
pyproject.toml held to it, and (with the network) whether its pins install from PyPI.

The install check resolves, for the TPU VM's Python and platform, exactly what launch.tpu_vm
installs: dbdist's own requirements (pyproject.toml) with the table's pins, TensorFlow's TPU build
and its libtpu, and the Cloud TPU API client of pod slices. It uses uv (`uv pip compile
--python-version --python-platform`), installed from PyPI for the test: pip resolves for another
Python and platform only with --only-binary=:all:, and dbdist's tree holds a package with no
wheel (promise, from tensorflow-datasets), which pip on the VM builds without trouble.
"""

import pathlib
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from launch import tpu_runtimes
from launch.accelerators import tpu_vm_type
from launch.tpu_runtimes import DEFAULT, JAX_CONTAINER, JAX_TPU_VM, choose_runtime, choose_runtime_for_engine

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
UV = "uv==0.13.9"
# What a TPU VM is: Ubuntu 22.04 (glibc 2.35) on x86_64 (https://cloud.google.com/tpu/docs/runtimes:
# tpu-ubuntu2204-base); the container's Debian 12 (glibc 2.36) takes the same wheels.
TPU_VM_PLATFORM = "x86_64-manylinux_2_35"


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-4", "v2-alpha-tpuv6e"),
    ("v3-8", "tpu-ubuntu2204-base"),
    ("v4-32", "tpu-vm-tf-2.20.0-pod-pjrt"),
    ("v5litepod-16", "tpu-vm-tf-2.20.0-pod-pjrt"),
    ("v6e-16", "tpu-vm-tf-2.20.0-pod-pjrt"),
])
def test_each_shape_gets_its_software_version(accelerator, runtime):
    assert choose_runtime(tpu_vm_type(accelerator)) == runtime
    assert choose_runtime(tpu_vm_type(accelerator), runtime) == runtime  # naming the default is fine


@pytest.mark.parametrize("accelerator, runtime, why", [
    ("v5litepod-8", "tpu-vm-tf-2.21.0-pjrt", r"TensorFlow's TPU build stops at tensorflow-tpu 2\.20\.0 .*no TensorFlow 2\.21\.0"),
    ("v5p-16", "tpu-vm-tf-2.21.0-pod-pjrt", r"stops at tensorflow-tpu 2\.20\.0"),
    ("v4-8", "tpu-vm-tf-2.18.0-pjrt", r"it carries TensorFlow 2\.18\.0 on Python 3\.10, and dbdist runs on TPUs with "
                                      r"tensorflow-tpu 2\.20\.0 and keras 3\.12\.4 only"),
    ("v5litepod-8", "tpu-vm-tf-2.18.0-pjrt-v5e-and-v6", r"carries TensorFlow 2\.18\.0"),
    ("v5litepod-8", "v2-alpha-tpuv6e", r"it is the software version for other TPU shapes; v5litepod-8 is one v5litepod host"),
    ("v4-32", "tpu-ubuntu2204-base", r"v4-32 is a multi-host pod slice"),
    ("v6e-8", "my-own-image", r"it is not in dbdist's table of TPU software"),
])
def test_software_outside_the_table_is_refused_naming_the_choices(accelerator, runtime, why):
    with pytest.raises(ValueError) as err:
        choose_runtime(tpu_vm_type(accelerator), runtime)
    message = str(err.value)
    assert message.startswith(f"--runtime_version={runtime!r} cannot run dbdist on {accelerator}: ")
    assert re.search(why, message), message
    expected = DEFAULT.runtime_for(tpu_vm_type(accelerator))
    assert f"Supported for {accelerator}: {expected} (the default; leave --runtime_version out)" in message
    assert "All supported: tensorflow-tpu 2.20.0 + libtpu 0.0.14, keras 3.12.4" in message


def _dockerfile_stage(name):
    """The Dockerfile's stage `name`: from its FROM line to the next FROM."""
    text = (REPO / "launch" / "Dockerfile").read_text()
    start = text.index(f"AS {name}\n")
    end = text.find("\nFROM ", start)
    return text[start:end if end >= 0 else len(text)]


def _dockerfile_tpu_stage():
    return _dockerfile_stage("tpu")


def test_the_dockerfile_tpu_target_installs_the_table():
    stage = _dockerfile_tpu_stage()
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"', stage, re.MULTILINE))
    assert args == {"DBDIST_PINS": " ".join(DEFAULT.dbdist_pins()), "TPU_BUILD": " ".join(DEFAULT.tpu_build())}
    text = (REPO / "launch" / "Dockerfile").read_text()
    assert f"FROM python:{DEFAULT.python}-slim AS tpu" in text
    assert "--force-reinstall --no-deps ${TPU_BUILD}" in stage  # the TPU build replaces dbdist's `tensorflow`
    assert f"cp \"$(python -c 'import libtpu; print(libtpu.get_library_path())')\" {tpu_runtimes.CONTAINER_LIBTPU}" in stage
    assert f"TF_PLUGGABLE_DEVICE_LIBRARY_PATH={tpu_runtimes.CONTAINER_LIBTPU}" in stage


def test_the_dockerfile_tpu_jax_target_installs_the_jax_container_table():
    stage = _dockerfile_stage("tpu-jax")
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"', stage, re.MULTILINE))
    assert args == {"JAX_PINS": " ".join(JAX_CONTAINER.dbdist_pins())}
    text = (REPO / "launch" / "Dockerfile").read_text()
    assert f"FROM python:{JAX_CONTAINER.python}-slim AS tpu-jax" in text
    assert "ENV KERAS_BACKEND=jax" in stage
    assert "TF_PLUGGABLE_DEVICE_LIBRARY_PATH" not in stage and "--force-reinstall" not in stage  # JAX finds libtpu itself
    assert text.rstrip().endswith('ENTRYPOINT ["python", "-m", "dbdist.train"]') and text.index("AS gpu") > text.index(
        "AS tpu-jax")  # gpu stays the last stage: the default target


def test_the_jax_container_table_is_the_tested_constraints():
    """The container's JAX stack is constraints.txt's, what `make test-all` runs."""
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    names = ("jax", "optax", "orbax_checkpoint", "keras", "tensorflow", "tensorboard")
    assert {name: getattr(JAX_CONTAINER, name) for name in names} == {
        name: pins[name.replace("_", "-")] for name in names}


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5litepod-32", "v2-alpha-tpuv5-lite"),  # a slice: the same base version (JAX installs itself)
    ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
    ("v4-32", "tpu-ubuntu2204-base"),
])
def test_the_jax_engine_runs_on_the_base_software_versions(accelerator, runtime):
    assert choose_runtime_for_engine(tpu_vm_type(accelerator), "", "jax") == runtime
    assert choose_runtime_for_engine(tpu_vm_type(accelerator), runtime, "jax") == runtime
    assert choose_runtime_for_engine(tpu_vm_type("v4-8"), "", "tf") == "tpu-ubuntu2204-base"  # tf: the table above


@pytest.mark.parametrize("accelerator, runtime, why", [
    ("v5p-16", "tpu-vm-tf-2.20.0-pod-pjrt", r"a TensorFlow TPU software version \(for --engine=tf\)"),
    ("v6e-8", "v2-alpha-tpuv5-lite", r"the base software version of other TPU generations, not of v6e"),
    ("v6e-8", "my-image", r"not in dbdist's table"),
])
def test_the_jax_engine_refuses_other_software_versions(accelerator, runtime, why):
    with pytest.raises(ValueError, match=rf"--runtime_version='{runtime}' cannot run dbdist's JAX engine on "
                                         rf"{accelerator}: (it is )?{why}.*\. Supported for {accelerator}: "):
        choose_runtime_for_engine(tpu_vm_type(accelerator), runtime, "jax")


def test_the_jax_tpu_vm_stack_is_for_the_images_python():
    """The VM installs into the image's python3, the TensorFlow table's Python; JAX 0.6.2 is
    pyproject.toml's floor (the newest JAX for 3.10)."""
    assert JAX_TPU_VM.python == DEFAULT.python
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    jax_requirement = next(Requirement(r) for r in project["optional-dependencies"]["test"] if r.startswith("jax"))
    assert jax_requirement.specifier.contains(JAX_TPU_VM.jax)
    assert JAX_TPU_VM.runtimes == DEFAULT.single_host


def test_the_readme_table_shows_the_table():
    readme = (REPO / "launch" / "README.md").read_text()
    table = readme[readme.index("**TensorFlow on the TPU.**"):readme.index("Why this one:")]
    shown = [*DEFAULT.dbdist_pins()[2:], *DEFAULT.tpu_build(), f"tensorboard=={DEFAULT.tensorboard}",
             f"Python | {DEFAULT.python}", *DEFAULT.runtimes(), *DEFAULT.sources.values()]
    assert [value for value in shown if value not in table] == []


def test_the_readme_jax_table_shows_the_jax_tables():
    readme = (REPO / "launch" / "README.md").read_text()
    table = readme[readme.index("**JAX on the TPU (`--engine=jax`).**"):readme.index("**ssh to every worker**")]
    shown = [*JAX_TPU_VM.dbdist_pins(), *JAX_CONTAINER.dbdist_pins(), f"libtpu=={JAX_TPU_VM.libtpu}",
             *JAX_TPU_VM.runtimes.values(), *JAX_TPU_VM.sources.values(), *JAX_CONTAINER.sources.values()]
    assert [value for value in shown if value not in table] == []


def test_pyproject_admits_the_tpu_stack():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    pinned = {Requirement(p).name: str(Requirement(p).specifier).removeprefix("==") for p in DEFAULT.dbdist_pins()}
    refused = {name: f"{version} not in {requirements[name]}" for name, version in pinned.items()
               if name in requirements and not requirements[name].contains(version)}
    assert refused == {}
    assert Requirement(f"python{project['requires-python']}").specifier.contains(f"{DEFAULT.python}.0")


# --- does it install? (PyPI) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uv(tmp_path_factory):
    target = tmp_path_factory.mktemp("uv")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), UV], check=True,
                   timeout=600)
    return str(target / "bin" / "uv")


def resolve_for_tpu_vm(uv, requirements, tmp_path):
    """`uv pip compile` of pyproject.toml plus `requirements` for the TPU VM's Python and platform,
    against PyPI only. Returns the CompletedProcess (stdout: the pinned set)."""
    extra = tmp_path / "tpu-requirements.in"
    extra.write_text("\n".join(requirements) + "\n")
    return subprocess.run(
        [uv, "pip", "compile", str(REPO / "pyproject.toml"), str(extra), "--python-version", DEFAULT.python,
         "--python-platform", TPU_VM_PLATFORM, "--index-url", "https://pypi.org/simple", "--no-config",
         "--no-header", "--quiet"],
        capture_output=True, text=True, timeout=600)


def launcher_requirements(stack):
    """Everything launch.tpu_vm installs next to dbdist on a pod slice's workers (a superset of one host's)."""
    return [*stack.dbdist_pins(), *stack.tpu_build(), *stack.pod_client]


@pytest.mark.network
@pytest.mark.slow
def test_what_the_launcher_installs_resolves_on_pypi_for_the_tpu_vm_python(uv, tmp_path):
    result = resolve_for_tpu_vm(uv, launcher_requirements(DEFAULT), tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = set(result.stdout.split())
    assert {f"tensorflow-tpu=={DEFAULT.tensorflow}", f"libtpu=={DEFAULT.libtpu}", f"keras=={DEFAULT.keras}",
            f"tensorflow=={DEFAULT.tensorflow}"} <= resolved, result.stdout


@pytest.mark.network
@pytest.mark.slow
def test_the_install_check_refuses_what_cannot_install(uv, tmp_path):
    """The check can fail: TensorFlow 2.21's TPU build does not exist, keras 3.15 needs Python 3.11."""
    for changed, message in [({"tensorflow-tpu": "tensorflow-tpu==2.21.0"}, "tensorflow-tpu"),
                             ({"keras": "keras==3.15.1"}, "Python>=3.11")]:
        requirements = [changed.get(Requirement(r).name, r) for r in launcher_requirements(DEFAULT)]
        result = resolve_for_tpu_vm(uv, requirements, tmp_path)
        assert result.returncode != 0 and message in result.stderr, (changed, result.stderr)


@pytest.mark.network
@pytest.mark.slow
def test_what_the_jax_engine_installs_resolves_on_pypi_for_the_tpu_vm_python(uv, tmp_path):
    """launch.tpu_vm --engine=jax: dbdist with JAX_TPU_VM's pins, for the image's Python 3.10."""
    result = resolve_for_tpu_vm(uv, list(JAX_TPU_VM.dbdist_pins()), tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = set(result.stdout.split())
    assert {f"jax=={JAX_TPU_VM.jax}", f"jaxlib=={JAX_TPU_VM.jax}", f"keras=={JAX_TPU_VM.keras}"} <= resolved, result.stdout
    assert any(line.startswith(f"libtpu=={JAX_TPU_VM.libtpu.rstrip('.*')}") for line in resolved), result.stdout
