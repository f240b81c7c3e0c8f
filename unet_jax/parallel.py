"""Device mesh and shardings: one code path from 1 CPU to many hosts.

The mesh has a single axis 'data' over every device of every process. Parameters are
replicated; batches are split along their first axis. jit then runs the step as one global
program, so BatchNorm statistics and gradient means are over the whole global batch.
"""

import jax
import numpy as np
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
