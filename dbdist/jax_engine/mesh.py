"""The JAX engine's devices: which --strategy values it takes, its Mesh, and how arrays are placed.

`data_parallel` is a 1-D Mesh over every device of every process (axis "data"): each
batch is sharded on its example axis, parameters and optimizer state are replicated, and
XLA sums the gradients over devices inside the jitted step. `one_device` is the same with
the first device alone. Imports no TensorFlow.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dbdist.config import JAX_STRATEGIES
from dbdist.errors import UserError

STRATEGIES = JAX_STRATEGIES
DATA_AXIS = "data"


def check_strategy(name):
    if name not in STRATEGIES:
        raise UserError(f"--strategy={name}: the JAX engine takes {', '.join(STRATEGIES)}")


def start_devices(num_cpu_devices=0, distributed=False, coordinator_address="", num_processes=0, process_id=-1):
    """Configures JAX before its backend starts: CPU device count, then multi-process start-up.

    jax.distributed.initialize() finds the other processes by itself on TPU pod slices (and
    SLURM); multi-node GPU needs coordinator_address, num_processes and process_id.
    """
    if num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
    if distributed or coordinator_address:
        explicit = {}
        if coordinator_address:
            explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes or None,
                            process_id=None if process_id < 0 else process_id)
        jax.distributed.initialize(**explicit)


def make_mesh(strategy):
    """The Mesh of `strategy`: the first device, or every device of every process in process order.

    Process order (jax.devices()) keeps each process's devices together, so each process's
    share of the batch is one contiguous run of it (see global_batch).
    """
    check_strategy(strategy)
    devices = jax.devices()
    if strategy == "one_device":
        if jax.process_count() > 1:
            raise UserError(f"--strategy=one_device runs on one device, but {jax.process_count()} processes "
                            "started; use --strategy=data_parallel")
        devices = devices[:1]
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh):
    """Parameters, optimizer state and metrics: one whole copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh):
    """Batches of shape (micro-batches, examples, ...): the example axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_divides(global_batch, mesh):
    devices = mesh.devices.size
    if global_batch % devices:
        raise UserError(
            f"global_batch_size {global_batch} does not divide over the {devices} devices of the JAX mesh; "
            f"use a multiple of {devices}"
        )
    return global_batch // devices


def is_chief():
    """Process 0 writes logs, metrics and exports."""
    return jax.process_index() == 0


def global_batch(local_arrays, mesh):
    """Global arrays from this process's share {key: (micro-batches, local examples, ...)}.

    Process p holds examples [p * local, (p + 1) * local) of every global batch.
    """
    sharding = batch_sharding(mesh)
    processes = jax.process_count()

    def to_global(array):
        array = np.asarray(array)
        shape = (array.shape[0], array.shape[1] * processes) + array.shape[2:]
        return jax.make_array_from_process_local_data(sharding, array, shape)

    return {key: to_global(value) for key, value in local_arrays.items()}
