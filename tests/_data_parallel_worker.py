"""Runs the same train steps on 1 and on all (4 forced CPU) devices; prints JSON results.

Launched by test_data_parallel.py in a subprocess, because the device count is fixed by
XLA_FLAGS before JAX starts.
"""

import json
import sys

import jax
import numpy as np

from tests.conftest import tiny_config
from unet_jax import data, parallel, steps, train
from unet_jax.data import pipeline


def run(devices, config, num_steps: int):
  mesh = parallel.make_mesh(devices)
  source = data.load_split(config, "train")
  state = train._initial_state(config, mesh, source)  # pylint: disable=protected-access
  train_step, _, _ = steps.jit_steps(config)
  batches = iter(pipeline.train_dataset(source, global_batch_size=config.batch_size,
                                        seed=config.seed))
  losses, shard_shapes, hlo = [], None, ""
  for _ in range(num_steps):
    batch = parallel.shard_batch(next(batches), mesh)
    shard_shapes = [list(s.data.shape) for s in batch["image"].addressable_shards]
    hlo = hlo or train_step.lower(state, batch).compile().as_text()
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  leaves = jax.tree.leaves(jax.device_get({"params": state.params,
                                           "batch_stats": state.batch_stats}))
  return {"losses": losses, "shard_shapes": shard_shapes,
          # Collectives the partitioned step runs: gathers of whole activations would show
          # here; all-reduces of gradients and BatchNorm sums are expected.
          "all_gathers": hlo.count(" all-gather("), "all_reduces": hlo.count(" all-reduce("),
          "native_calls": hlo.count('custom_call_target="unet_'),
          "spec": list(batch["image"].sharding.spec),
          "leaves": [np.asarray(x).ravel().tolist() for x in leaves]}


def main():
  # SGD: Adam's m / sqrt(v) turns float reduction-order noise in near-zero gradients into
  # full-size update differences; SGD keeps them at rounding level, so the check is tight.
  config = tiny_config(optimizer="sgd", learning_rate=0.05, schedule="constant")
  # float32 whatever model.dtype='auto' picks here: the check is of the partitioning, to
  # rounding level, and bf16 activations round differently with 8 rows per shard than with 2.
  config.model.dtype = "float32"
  config.model.conv_impl = sys.argv[1] if len(sys.argv) > 1 else "auto"
  # Dropout on: its masks must not depend on how the batch is split (blocks.Dropout).
  config.model.dropout = 0.2
  # Squeeze-excitation on: its per-sample native passes split over the batch like the rest.
  config.model.squeeze_excitation = True
  devices = jax.devices()
  results = {"device_count": len(devices),
             "one": run(devices[:1], config, 3), "all": run(devices, config, 3)}
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  main()
