"""onnxruntime (CPU, default session options) time for one image, TGS and Carvana models.

  python -m benchmarks.deploy.onnx_inference [--runs 20] [--out benchmarks/results/<slug>/onnx.json]

Exports the configs' models (configs/tgs.py: 101x101 gray image, mirrored inside the model;
configs/carvana.py: 256x384 RGB) with initial weights, as `unet_jax.export --format onnx`
does, and reports the median of `--runs` session.run calls on one image after warm-up.
Weights do not change the time; the load average before and after says whether the machine
was shared.
"""

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from configs import carvana, tgs
from unet_jax import inference, models, onnx_export
from unet_jax.data import sources

CASES = {  # name: (config module, stored image size, input channels, config.image_size or None)
    "tgs_101x101": (tgs, (101, 101), 1, None),
    # A TGS model trained at the 128x128 mirrored input (configs/tgs.py until 2026-12-07).
    "tgs_101x101_padded_128x128": (tgs, (101, 101), 1, (128, 128)),
    "carvana_256x384": (carvana, (256, 384), 3, None),
}


def onnx_file(config, channels: int, directory: pathlib.Path) -> pathlib.Path:
  """The config's model with initial weights, exported to ONNX in `directory`."""
  config.model.conv_impl = "xla"
  model = models.from_config(config)
  spec = jax.ShapeDtypeStruct((1, *config.image_size, channels), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), spec)
  state = inference.InferenceState(model.apply, variables["params"], variables["batch_stats"])
  path = directory / f"{config.dataset}.onnx"
  batch = jax.export.symbolic_shape("batch")[0]
  spec = jax.ShapeDtypeStruct((batch, *config.image_size, channels), jnp.float32)
  path.write_bytes(onnx_export.onnx_model(state, spec).SerializeToString())
  return path


def time_one_image(path: pathlib.Path, image: np.ndarray, runs: int, warmup: int = 3) -> dict:
  """Median and spread (ms) of session.run on a batch of one."""
  _, onnxruntime = onnx_export.require_packages()
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  feed = {"images": image[None]}
  for _ in range(warmup):
    session.run(None, feed)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    session.run(None, feed)
    times.append(1e3 * (time.perf_counter() - start))
  return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
          "runs": runs}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=20, help="Timed runs after 3 warm-up runs.")
  parser.add_argument("--out", default="", help="Also write the results as JSON here.")
  args = parser.parse_args()
  _, onnxruntime = onnx_export.require_packages()
  report = {"machine": machine.detect_device(), "onnxruntime": onnxruntime.__version__,
            "loadavg_before": list(os.getloadavg()), "results": {}}
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as directory:
    for name, (module, stored_size, channels, image_size) in CASES.items():
      config = module.get_config()
      config.image_size = image_size or config.image_size
      path = onnx_file(config, channels, pathlib.Path(directory))
      image = rng.uniform(0, 255, (*stored_size, channels)).astype(np.float32)
      image = sources.pad_to(image, tuple(config.image_size))  # A no-op unless image_size is larger.
      report["results"][name] = {"model_input": list(image.shape), **time_one_image(
          path, image, args.runs)}
      print(f"{name}: input {image.shape}, median {report['results'][name]['median_ms']:.1f} ms "
            f"(min {report['results'][name]['min_ms']:.1f}, max "
            f"{report['results'][name]['max_ms']:.1f}) over {args.runs} runs", flush=True)
  report["loadavg_after"] = list(os.getloadavg())
  print(f"onnxruntime {report['onnxruntime']} on {report['machine']['name']} "
        f"({report['machine']['cores']} cores); load average before "
        f"{report['loadavg_before'][0]:.2f}, after {report['loadavg_after'][0]:.2f}")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
