"""Device mesh and shardings: one code path from 1 CPU to many hosts.

The mesh has a single axis 'data' over every device of every process. Parameters are
replicated; batches are split along their first axis. jit then runs the step as one global
program, so BatchNorm statistics and gradient means are over the whole global batch.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unet_jax.data.pipeline import ProcessShard
from unet_jax.errors import ConfigError


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices of all hosts)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def process_shard() -> ProcessShard:
  """This process's slice of every global batch."""
  return ProcessShard(jax.process_index(), jax.process_count())


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises a one-line ValueError when a global batch does not split evenly over devices."""
  devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ConfigError(f"{name}={global_batch_size} is not divisible by the {devices} devices; "
                     f"set --config.{name} to a multiple of {devices}")


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Builds global arrays, sharded over 'data', from this process's rows of a batch."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 100) -> None:
  """Joins a multi-process run: explicit coordinates, or auto-detected on SLURM/TPU/MPI.

  CPU collectives go through gloo, so the same path runs on CPU hosts (and in the tests).
  A process whose peer dies stops within about `heartbeat_timeout_seconds`.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def to_host(tree):
  """numpy copies of (replicated) device arrays, also when they span several processes."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def replicate(local_array, mesh: Mesh):
  """The same host array on every device of `mesh` (every process passes the same data)."""
  return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(local_array))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: all processes call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def broadcast_from_first(value):
  """Process 0's `value` on every process (a collective: all processes call it)."""
  if jax.process_count() == 1:
    return value
  return multihost_utils.broadcast_one_to_all(np.asarray(value))


def sync(name: str) -> None:
  """Waits for every process to reach this point."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
