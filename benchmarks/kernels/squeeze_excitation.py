"""Squeeze-excitation's forward + backward on XLA against the native per-sample passes.

  python -m benchmarks.kernels.squeeze_excitation [--config tgs] [--out-dir DIR]

Times blocks.SqueezeExcitation over every level of a config's U-Net (batch_size x image_size,
features doubling to the bottleneck; the encoder and decoder levels each gate once), jitted
value-and-gradient of a weighted sum of the outputs, float32 and bfloat16, the two
implementations taking turns, best of `repeats`. Writes <out-dir>/<slug>/squeeze_excitation.*
"""

import argparse
import importlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from unet_jax.models import blocks, unet
from unet_jax.ops import library

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def level_shapes(batch: int, height: int, width: int, features: int, depth: int) -> list:
  """NHWC shapes SE gates in a UNet of `depth` levels: two per level (encoder, decoder) and
  one at the bottleneck; the input first padded as the SAME U-Net pads it (configs/tgs.py:
  101x101 -> 112x112)."""
  pads, _ = unet.input_padding(height, width, depth, "SAME", overlap_tile=False)
  if pads:
    height, width = height + sum(pads[0]), width + sum(pads[1])
  shapes = []
  for level in range(depth):
    shape = (batch, height >> level, width >> level, features << level)
    shapes += [shape, shape]
  return shapes + [(batch, height >> depth, width >> depth, features << depth)]


def _step(impl: str, weights):
  module = blocks.SqueezeExcitation(impl=impl)

  def loss(variables, inputs):
    return sum(jnp.vdot(module.apply(v, x).astype(jnp.float32), w)
               for v, x, w in zip(variables, inputs, weights))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def time_shapes(shapes, dtype, repeats: int = 5) -> dict:
  """Best seconds of forward + backward per implementation, taking turns."""
  rng = np.random.default_rng(0)
  inputs = [jnp.asarray(rng.normal(size=s), DTYPES[dtype]) for s in shapes]
  weights = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  variables = [blocks.SqueezeExcitation().init(jax.random.PRNGKey(0), x) for x in inputs]
  steps = {impl: _step(impl, weights) for impl in ("xla", "onednn")}
  for step in steps.values():  # Compile and warm up.
    jax.block_until_ready(step(variables, inputs))
  best = {impl: float("inf") for impl in steps}
  for _ in range(repeats):
    for impl, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(variables, inputs))
      best[impl] = min(best[impl], time.perf_counter() - start)
  return {impl: seconds * 1e3 for impl, seconds in best.items()}


def run(config_name: str, out_dir, repeats: int = 5, batch: int | None = None) -> dict:
  """Times configs/<config_name>.py's gated maps; writes and returns the report."""
  if library.unavailable_reason():
    raise SystemExit(f"native kernels unavailable: {library.unavailable_reason()}")
  config = importlib.import_module(f"configs.{config_name}").get_config()
  shapes = level_shapes(batch or config.batch_size, *config.image_size, config.model.features,
                        config.model.depth)
  device = machine.detect_device()
  data = {"benchmark": "squeeze_excitation", "config": f"configs/{config_name}.py",
          "shapes": shapes,
          "device": device, "versions": machine.versions(), "repeats": repeats,
          "ms": {dtype: time_shapes(shapes, dtype, repeats) for dtype in DTYPES}}
  folder = pathlib.Path(out_dir) / device["slug"]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "squeeze_excitation.json").write_text(json.dumps(data, indent=1) + "\n")
  (folder / "squeeze_excitation.md").write_text(markdown(data))
  return data


def markdown(data: dict) -> str:
  rows = [f"| {dtype} | {ms['xla']:.1f} | {ms['onednn']:.1f} | {ms['xla'] / ms['onednn']:.2f}x |"
          for dtype, ms in data["ms"].items()]
  return "\n".join([
      f"# Squeeze-excitation, forward + backward over {data['config']}'s levels",
      "", f"Machine: {data['device'].get('name', data['device']['slug'])}. "
      f"{len(data['shapes'])} gated maps, {data['shapes'][0]} to {data['shapes'][-1]}; "
      f"best of {data['repeats']} jitted calls, the two taking turns. The differentiated sum "
      "lets XLA fuse SE's output into it; in the model that output feeds a native kernel "
      "and is written out either way.", "",
      "| dtype | XLA ms | native ms | native speed-up |", "|---|---|---|---|", *rows, ""])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="tgs", help="a module of configs/")
  parser.add_argument("--out-dir", default=str(RESULTS))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch", type=int, default=None, help="default: the config's")
  args = parser.parse_args(argv)
  print(markdown(run(args.config, args.out_dir, args.repeats, args.batch)))


if __name__ == "__main__":
  main()
