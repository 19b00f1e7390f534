"""The accelerator shapes the launchers accept, checked before anything is created or submitted.

TPU VMs are named `FAMILY-N` (`gcloud compute tpus tpu-vm create --accelerator-type`); Vertex AI
machines are a machine type plus, for GPUs, an accelerator type and count (`MachineSpec`). The
tables follow Google Cloud's "TPU versions" and Vertex AI "Configure compute resources for custom
training" pages; an unknown value is refused with the valid ones listed, because the cloud's own
error would only come after quota checks, or minutes into provisioning.

`replicas` is what dbdist sees as `strategy.num_replicas_in_sync`, so that --global_batch_size
can be checked against it here rather than after the machines are paid for.
"""

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class TpuFamily:
    """One TPU generation as a TPU VM accelerator type `NAME-N`."""

    name: str
    cores_per_replica: int  # v4 and v5p pair two TensorCores into one device (megacore): one TF replica
    sizes: tuple = ()  # the valid N; empty when any multiple of `step` up to `max_size` is valid
    step: int = 0
    max_size: int = 0
    host_size: int = 8  # the largest N that is one host (one VM)

    def accepts(self, size):
        return size in self.sizes if self.sizes else (size % self.step == 0 and 0 < size <= self.max_size)

    def describe(self):
        if self.sizes:
            return f"{self.name}-{{{','.join(map(str, self.sizes))}}}"
        return f"{self.name}-N (N a multiple of {self.step} up to {self.max_size})"


TPU_FAMILIES = {
    f.name: f
    for f in (
        TpuFamily("v2", 1, sizes=(8, 32, 128, 256, 512)),
        TpuFamily("v3", 1, sizes=(8, 32, 64, 128, 256, 512, 1024, 2048)),
        TpuFamily("v4", 2, sizes=(8, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 4096)),
        TpuFamily("v5litepod", 1, sizes=(1, 4, 8, 16, 32, 64, 128, 256)),
        TpuFamily("v5p", 2, step=8, max_size=12288),
        TpuFamily("v6e", 1, sizes=(1, 4, 8, 16, 32, 64, 128, 256)),
    )
}


@dataclasses.dataclass(frozen=True)
class TpuVmType:
    family: TpuFamily
    size: int

    @property
    def name(self):
        return f"{self.family.name}-{self.size}"

    @property
    def multi_host(self):
        """A pod slice of several VMs: TensorFlow drives it as one client from worker 0."""
        return self.size > self.family.host_size

    @property
    def replicas(self):
        return max(1, self.size // self.family.cores_per_replica)


def tpu_vm_type(accelerator_type):
    """Parses --accelerator_type for a TPU VM (v4-8, v5litepod-8, v5p-16, v6e-4, ...)."""
    valid = "; ".join(f.describe() for f in TPU_FAMILIES.values())
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type or "")
    family = TPU_FAMILIES.get(match.group(1)) if match else None
    if family is None or not family.accepts(int(match.group(2))):
        raise ValueError(f"--accelerator_type={accelerator_type!r} is not a TPU VM accelerator type; expected one of: {valid}")
    return TpuVmType(family, int(match.group(2)))


# --- Vertex AI ----------------------------------------------------------------------------------

# GPU -> the machine types that carry it and how many. n1 machines take a count; the other families
# come with a fixed number of GPUs per machine type.
N1_MACHINE = re.compile(r"n1-(standard|highmem|highcpu)-(1|2|4|8|16|32|64|96)")
N1_GPU_COUNTS = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
}
FIXED_GPU_MACHINES = {
    "NVIDIA_L4": {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1, "g2-standard-32": 1,
                  "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8},
    "NVIDIA_TESLA_A100": {"a2-highgpu-1g": 1, "a2-highgpu-2g": 2, "a2-highgpu-4g": 4, "a2-highgpu-8g": 8, "a2-megagpu-16g": 16},
    "NVIDIA_A100_80GB": {"a2-ultragpu-1g": 1, "a2-ultragpu-2g": 2, "a2-ultragpu-4g": 4, "a2-ultragpu-8g": 8},
    "NVIDIA_H100_80GB": {"a3-highgpu-1g": 1, "a3-highgpu-2g": 2, "a3-highgpu-4g": 4, "a3-highgpu-8g": 8},
    "NVIDIA_H100_MEGA_80GB": {"a3-megagpu-8g": 8},
    "NVIDIA_H200_141GB": {"a3-ultragpu-8g": 8},
    "NVIDIA_B200": {"a4-highgpu-8g": 8},
}
# TPU machines Vertex AI runs TensorFlow on: v2/v3 as `cloud-tpu` with 8 cores, v5e as ct5lp-hightpu-*.
CLOUD_TPU_TYPES = ("TPU_V2", "TPU_V3")
V5E_MACHINES = {"ct5lp-hightpu-1t": ("1x1", 1), "ct5lp-hightpu-4t": ("2x2", 4), "ct5lp-hightpu-8t": ("2x4", 8)}
CPU_MACHINE = re.compile(r"(n1|n2|n2d|e2|c2|c3|n4)-(standard|highmem|highcpu)-\d+")


@dataclasses.dataclass(frozen=True)
class VertexMachine:
    """One replica's machine: a `MachineSpec` and what dbdist sees on it."""

    machine_type: str
    kind: str  # "cpu", "gpu" or "tpu"
    accelerator_type: str = ""
    accelerator_count: int = 0
    tpu_topology: str = ""

    @property
    def replicas(self):
        """Replicas dbdist runs on this machine (mirrored over its GPUs, TPU cores or chips)."""
        return max(1, self.accelerator_count)

    def machine_spec(self):
        """MachineSpec as Vertex AI's REST API spells it (camelCase)."""
        spec = {"machineType": self.machine_type}
        if self.accelerator_type:
            spec.update(acceleratorType=self.accelerator_type, acceleratorCount=self.accelerator_count)
        if self.tpu_topology:
            spec["tpuTopology"] = self.tpu_topology
        return spec


def _valid_vertex_shapes():
    gpus = [f"{gpu} on {sorted(FIXED_GPU_MACHINES[gpu])}" for gpu in FIXED_GPU_MACHINES]
    gpus += [f"{gpu} x{N1_GPU_COUNTS[gpu]} on n1-standard-*/n1-highmem-*" for gpu in N1_GPU_COUNTS]
    return (
        "GPUs: " + "; ".join(gpus) + ". TPUs: --machine_type=cloud-tpu with --accelerator_type=TPU_V2|TPU_V3 (8 cores), "
        f"or --machine_type={'|'.join(V5E_MACHINES)} (TPU v5e, no --accelerator_type). "
        "CPU only: --machine_type=n1-standard-8 (etc.) with no --accelerator_type"
    )


def vertex_machine(machine_type, accelerator_type="", accelerator_count=0):
    """Checks --machine_type/--accelerator_type/--accelerator_count against what Vertex AI offers."""
    machine_type, accelerator_type = machine_type or "", accelerator_type or ""
    if not machine_type:
        raise ValueError(f"--machine_type is required; valid shapes: {_valid_vertex_shapes()}")
    if machine_type.startswith("ct6e-"):
        raise ValueError(f"--machine_type={machine_type}: Vertex AI runs TPU v6e for JAX and PyTorch only, "
                         "not TensorFlow; train on a v6e TPU VM with `python -m launch.tpu_vm --accelerator_type=v6e-8`")
    if machine_type in V5E_MACHINES:
        topology, chips = V5E_MACHINES[machine_type]
        if accelerator_type or accelerator_count not in (0, chips):
            raise ValueError(f"--machine_type={machine_type} implies {chips} TPU v5e chip(s) (topology {topology}); "
                             f"drop --accelerator_type={accelerator_type!r}/--accelerator_count={accelerator_count}")
        return VertexMachine(machine_type, "tpu", accelerator_count=chips, tpu_topology=topology)
    if machine_type == "cloud-tpu" or accelerator_type in CLOUD_TPU_TYPES:
        if machine_type != "cloud-tpu" or accelerator_type not in CLOUD_TPU_TYPES or accelerator_count not in (0, 8):
            raise ValueError(f"TPU v2/v3 on Vertex AI is --machine_type=cloud-tpu --accelerator_type=TPU_V2|TPU_V3 "
                             f"--accelerator_count=8; got {machine_type!r}, {accelerator_type!r}, {accelerator_count}")
        return VertexMachine(machine_type, "tpu", accelerator_type, 8)
    if not accelerator_type:
        if not CPU_MACHINE.fullmatch(machine_type) or accelerator_count:
            raise ValueError(f"--machine_type={machine_type!r} without --accelerator_type is not a CPU machine type "
                             f"(or --accelerator_count={accelerator_count} needs --accelerator_type); valid shapes: "
                             f"{_valid_vertex_shapes()}")
        return VertexMachine(machine_type, "cpu")
    if accelerator_type in N1_GPU_COUNTS:
        counts = N1_GPU_COUNTS[accelerator_type]
        count = accelerator_count or 1
        if not N1_MACHINE.fullmatch(machine_type) or count not in counts:
            raise ValueError(f"--accelerator_type={accelerator_type} goes on n1-standard-*/n1-highmem-*/n1-highcpu-* "
                             f"machines with --accelerator_count in {counts}; got --machine_type={machine_type} "
                             f"--accelerator_count={accelerator_count}")
        return VertexMachine(machine_type, "gpu", accelerator_type, count)
    if accelerator_type in FIXED_GPU_MACHINES:
        machines = FIXED_GPU_MACHINES[accelerator_type]
        if machine_type not in machines:
            raise ValueError(f"--accelerator_type={accelerator_type} comes on --machine_type in {sorted(machines)}, "
                             f"got {machine_type!r}")
        if accelerator_count not in (0, machines[machine_type]):
            raise ValueError(f"--machine_type={machine_type} has {machines[machine_type]} x {accelerator_type}; "
                             f"got --accelerator_count={accelerator_count}")
        return VertexMachine(machine_type, "gpu", accelerator_type, machines[machine_type])
    raise ValueError(f"--accelerator_type={accelerator_type!r} does not exist on Vertex AI; valid shapes: {_valid_vertex_shapes()}")
