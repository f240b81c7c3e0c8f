"""grain input pipelines: random-access source -> shuffled, augmented, per-process batches.

Batches stay uint8 on the host (4x less to copy than float32); normalisation happens on the
device inside the jitted step. Every process reads only its own rows of each global batch, in
an order that does not depend on the process count, so 1 host x 4 devices and 2 hosts x 2
devices see the same global batches.
"""

import dataclasses
import os

from absl import flags
import grain
import numpy as np
from unet_jax.errors import ConfigError


def default_threads() -> int:
  """One reading thread per usable core, at most 16."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(16, cores or 1))


def resolve_workers(num_workers: int, backend: str) -> int:
  """config.num_workers as grain's worker process count: -1 (auto) is one per core, at most 16,
  where an accelerator runs the step (on an H200's 16-core host 16 processes delivered 10x the
  img/s of grain's threads) and none on a CPU, whose cores run the step (threads decode)."""
  if num_workers < -1:
    raise ConfigError(f"num_workers={num_workers}; set --config.num_workers to -1 (auto), 0 "
                      "(threads only) or a number of worker processes")
  if num_workers == -1:
    return 0 if backend == "cpu" else default_threads()
  return num_workers


def resolve_device_prefetch(device_prefetch: int, backend: str) -> int:
  """config.device_prefetch as the batches put on the device ahead by background threads:
  -1 (auto) is 2 where an accelerator runs the step and 0 (inline) on a CPU, whose cores run
  the step: there the threads cost the synthetic demo's small model 9-11% a step (2-core EPYC)."""
  if device_prefetch < -1:
    raise ConfigError(f"device_prefetch={device_prefetch}; set --config.device_prefetch to -1 "
                      "(auto), 0 (put inline) or a number of batches")
  if device_prefetch == -1:
    return 0 if backend == "cpu" else 2
  return device_prefetch


def read_ahead(prefetch: int, num_threads: int | None = None) -> int:
  """Batches the training pipeline reads ahead: `prefetch`, but at least one per thread, as
  grain runs no more threads than its buffer holds (4 of a 16-core GPU host's 16 otherwise)."""
  return max(prefetch, num_threads or default_threads())


_STREAM_LENGTH = 2**62  # Positions of the endless training stream (epochs of the source).


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which slice of every global batch this process loads."""

  index: int = 0
  count: int = 1


def _per_process_batches(ds: grain.MapDataset, global_batch_size: int,
                         shard: ProcessShard) -> grain.MapDataset:
  if global_batch_size % shard.count:
    raise ConfigError(f"global batch size {global_batch_size} does not divide over "
                     f"{shard.count} processes; pick a multiple of {shard.count}")
  local_batch_size = global_batch_size // shard.count
  # Batching stacks elements into new contiguous arrays, so views (flips, cache rows) need
  # no copy of their own before it: a per-element stage less (TGS 27k -> 38k images/s).
  ds = ds.batch(local_batch_size, drop_remainder=True)
  # Local batch b holds global rows [b * local, (b + 1) * local): process p takes b = s*P + p.
  return ds[shard.index::shard.count]


class _EpochShuffled:
  """Reads position i of the endless stream: epoch i // n, in that epoch's own permutation.

  Each epoch's order is numpy's permutation for (seed, epoch), drawn once and cached, so an
  element costs O(1) for any n (grain's index_shuffle costs ~1 ms per element below ~200).
  """

  def __init__(self, source, seed: int):
    self.source, self.seed = source, seed
    self._order = (-1, None)  # (epoch, permutation) of the epoch read last.

  def __call__(self, position) -> dict:
    epoch, offset = divmod(int(position), len(self.source))
    order = self._order  # One read: a thread that swaps it meanwhile does no harm.
    if order[0] != epoch:
      order = (epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.source)))
      self._order = order
    return self.source[int(order[1][offset])]


def train_dataset(source, *, global_batch_size: int, seed: int, augment=None,
                  shard: ProcessShard = ProcessShard(), num_workers: int = 0,
                  num_threads: int | None = None, prefetch: int = 4) -> grain.IterDataset:
  """Infinite, reshuffled-every-epoch training batches as a checkpointable grain dataset.

  Element i of the stream depends only on (seed, i); augmentation draws from grain's per-element
  rng of (seed, i), so a seed and a step fix every batch, whatever the threads or workers.
  Decoding and augmenting run in `num_threads` threads (default: one per core, at most 16;
  OpenCV and PIL release the GIL), or in `num_workers` processes when that is > 0.
  """
  if not len(source):
    raise ConfigError("the training split is empty; prepare the dataset again")
  ds = grain.MapDataset.range(_STREAM_LENGTH).map(_EpochShuffled(source, seed)).seed(seed)
  if augment is not None:
    ds = ds.random_map(augment)
  ds = _per_process_batches(ds, global_batch_size, shard)
  threads = num_threads or default_threads()
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=read_ahead(prefetch, threads)))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a plain script has none.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def put_ahead(ds: grain.IterDataset, put, batches: int) -> grain.IterDataset:
  """`ds` with `put` (host batch -> device arrays) applied, `batches` ahead of the consumer.

  grain.experimental.device_put's two background stages (read, then copy), with `put` building
  sharded global arrays: the host's read and host-to-device copy overlap the step's dispatch
  instead of adding to it (beside the H200, the small models' step waited 46-61% for the
  host). Checkpoints hold the position consumed, not the one read. 0: `put` inline.
  """
  if batches <= 0:
    return ds.map(put)
  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=batches)
  return grain.experimental.ThreadPrefetchIterDataset(ds.map(put), prefetch_buffer_size=batches)


def _with_valid_flag(source, padded_length: int) -> grain.MapDataset:
  """Pads a split to `padded_length` with copies of element 0 flagged `valid = 0`."""

  def load(index):
    is_real = int(index) < len(source)
    element = dict(source[int(index) if is_real else 0])
    element["valid"] = np.float32(is_real)
    return element

  return grain.MapDataset.range(padded_length).map(load)


def eval_batches(source, *, global_batch_size: int, shard: ProcessShard = ProcessShard(),
                 num_threads: int = 2):
  """One pass over a split in fixed-shape batches; padding rows carry `valid = 0`.

  Every batch has the same shape, so the jitted eval step compiles once.
  """
  padded = -(-len(source) // global_batch_size) * global_batch_size
  ds = _per_process_batches(_with_valid_flag(source, padded), global_batch_size, shard)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
