"""The grain pipeline: reproducible order, per-epoch reshuffles, shards, resumable state."""

import numpy as np
import pytest

from unet_jax.data import pipeline
from unet_jax.errors import ConfigError


class Numbered:
  """Element i is an 8x8 image filled with i, a mask of i % 2 and a scalar depth."""

  def __init__(self, size: int):
    self.size = size

  def __len__(self):
    return self.size

  def __getitem__(self, index):
    return {"image": np.full((8, 8, 3), index, np.uint8),
            "mask": np.full((8, 8), index % 2, np.uint8), "depth": np.float32(index)}


def _ids(batch):
  return batch["image"][:, 0, 0, 0].tolist()


def _first_batches(count, **kwargs):
  iterator = iter(pipeline.train_dataset(Numbered(kwargs.pop("size", 40)), **kwargs))
  return [next(iterator) for _ in range(count)]


def test_same_seed_gives_identical_batches():
  first = _first_batches(6, global_batch_size=8, seed=3)
  again = _first_batches(6, global_batch_size=8, seed=3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_different_seed_gives_a_different_order():
  first = [_ids(b) for b in _first_batches(5, global_batch_size=8, seed=0)]
  other = [_ids(b) for b in _first_batches(5, global_batch_size=8, seed=1)]
  assert first != other


def test_every_epoch_is_a_new_permutation():
  ids = sum((_ids(b) for b in _first_batches(10, global_batch_size=8, seed=0)), [])
  epochs = [ids[i:i + 40] for i in range(0, 80, 40)]
  assert all(sorted(epoch) == list(range(40)) for epoch in epochs)
  assert epochs[0] != epochs[1]


def test_batches_are_uint8_and_scalars_batch_flat():
  batch = _first_batches(1, global_batch_size=4, seed=0)[0]
  assert batch["image"].dtype == batch["mask"].dtype == np.uint8
  assert batch["image"].shape == (4, 8, 8, 3) and batch["depth"].shape == (4,)


def test_process_shards_tile_the_global_batch():
  whole = _first_batches(3, global_batch_size=8, seed=5)
  halves = [_first_batches(3, global_batch_size=8, seed=5, shard=pipeline.ProcessShard(p, 2))
            for p in range(2)]
  for step in range(3):
    assert _ids(halves[0][step]) + _ids(halves[1][step]) == _ids(whole[step])


def test_augmented_stream_resumes_from_its_state():
  def augment(element, rng):
    return dict(element, image=element["image"] + np.uint8(rng.integers(0, 50)))

  dataset = pipeline.train_dataset(Numbered(40), global_batch_size=4, seed=2, augment=augment)
  iterator = iter(dataset)
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["image"] for _ in range(3)]
  resumed = iter(dataset)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["image"], want)


@pytest.mark.parametrize("ahead", [0, 3])
def test_put_ahead_applies_put_and_checkpoints_the_position_consumed(ahead):
  # With threads `ahead`, the reader has gone past what the consumer took: the state must be
  # the consumer's, or a resumed run would skip the batches that sat in the buffers.
  dataset = pipeline.train_dataset(Numbered(40), global_batch_size=4, seed=3)
  plain = iter(dataset)
  expected = [_ids(next(plain)) for _ in range(8)]
  put = lambda batch: dict(batch, put=np.ones(1))  # pylint: disable=unnecessary-lambda-assignment
  ahead_iterator = iter(pipeline.put_ahead(dataset, put, ahead))
  taken = [next(ahead_iterator) for _ in range(5)]
  assert all("put" in batch for batch in taken)
  assert [_ids(batch) for batch in taken] == expected[:5]
  state = ahead_iterator.get_state()
  resumed = iter(pipeline.put_ahead(dataset, put, ahead))
  resumed.set_state(state)
  assert [_ids(next(resumed)) for _ in range(3)] == expected[5:]


def test_device_prefetch_auto_puts_ahead_only_beside_an_accelerator():
  assert pipeline.resolve_device_prefetch(-1, "cpu") == 0
  assert pipeline.resolve_device_prefetch(-1, "gpu") == 2
  assert pipeline.resolve_device_prefetch(3, "cpu") == 3
  with pytest.raises(ConfigError, match="--config.device_prefetch"):
    pipeline.resolve_device_prefetch(-2, "gpu")


def test_multiprocessing_workers_give_the_same_batches():
  threads = _first_batches(3, global_batch_size=8, seed=4)
  workers = _first_batches(3, global_batch_size=8, seed=4, num_workers=2)
  assert [_ids(b) for b in threads] == [_ids(b) for b in workers]


def test_eval_batches_pad_with_invalid_rows():
  batches = list(pipeline.eval_batches(Numbered(10), global_batch_size=4))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [1.0] * 10 + [0.0] * 2


def test_empty_source_is_a_config_error():
  with pytest.raises(pipeline.ConfigError, match="empty"):
    pipeline.train_dataset(Numbered(0), global_batch_size=4, seed=0)


def test_the_read_buffer_holds_a_batch_per_thread(caplog):
  # grain runs no more reading threads than its buffer holds batches: a 16-core GPU host with
  # the default prefetch of 4 read with 4 threads (grain warned; measured on an H200 host).
  assert pipeline.read_ahead(4, 16) == 16 and pipeline.read_ahead(4, 2) == 4
  caplog.set_level("WARNING")
  batches = _first_batches(2, global_batch_size=4, seed=0, num_threads=8, prefetch=2)
  assert len(batches) == 2
  assert not [r for r in caplog.records if "smaller than num_threads" in r.getMessage()]


def test_auto_workers_are_processes_beside_an_accelerator_and_threads_on_a_cpu():
  assert pipeline.resolve_workers(-1, "cpu") == 0
  assert pipeline.resolve_workers(-1, "gpu") == pipeline.default_threads()
  assert pipeline.resolve_workers(3, "cpu") == 3 and pipeline.resolve_workers(0, "tpu") == 0
  with pytest.raises(pipeline.ConfigError, match="set --config.num_workers to -1"):
    pipeline.resolve_workers(-2, "gpu")
