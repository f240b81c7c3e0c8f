"""Train-step throughput: the JAX U-Net next to its PyTorch twin, in one run.

  python benchmarks/step/throughput.py --preset tgs        # or classic, carvana
  python benchmarks/step/throughput.py --preset tgs --timed-steps 3 --repeats 1   # quick look

Every variant (benchmarks.step.variants.VARIANTS) lives in its own process: it is built and run
once (compile / first step, reported separately), warmed up, then timed in blocks of
`timed_steps` steps, `repeats` times, the variants taking turns (in a rotated order each
round) so that machine drift hits every one of them. Writes
benchmarks/results/<device-slug>/<preset>.{json,md,png}; the device is detected.
"""

import argparse
import datetime
import multiprocessing
import os
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/step/throughput.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks import flops, machine  # pylint: disable=wrong-import-position
from benchmarks.step import report, variants

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"
SCHEMA_VERSION = 1
_MODEL = {"dropout": 0.0, "norm": "batch", "upsample": "transpose", "padding": "SAME"}
# The standard protocol (issue 5). On a 2-core CPU it takes about an hour per preset; pass
# --timed-steps / --repeats to trade precision for time (the report then says so).
_CPU_PROTOCOL = {"warmup_steps": 2, "timed_steps": 20, "repeats": 3}
_GPU_PROTOCOL = {"warmup_steps": 20, "timed_steps": 100, "repeats": 5}


def _carvana_spec():
  from configs import carvana  # pylint: disable=import-outside-toplevel
  config = carvana.get_config()
  height, width = config.image_size
  return {"features": config.model.features, "depth": config.model.depth,
          "dropout": config.model.dropout if isinstance(config.model.dropout, (int, float))
          else tuple(config.model.dropout), "norm": config.model.norm,
          "upsample": config.model.upsample, "padding": config.model.padding,
          "height": height, "width": width, "batch": config.batch_size, "in_channels": 3}


def preset_spec(name: str, platform: str) -> dict:
  """Model and batch of a preset on `platform` ('cpu' or 'gpu')."""
  if name == "tgs":
    spec = {**_MODEL, "features": 16, "depth": 3, "height": 128, "width": 128, "batch": 64,
            "in_channels": 1}
  elif name == "classic":
    # On a GPU: 256x256 and batch 32 (~9 TFLOP a step), enough work per step to fill it.
    size, batch = ((96, 128), 8) if platform == "cpu" else ((256, 256), 32)
    spec = {**_MODEL, "features": 64, "depth": 4, "height": size[0], "width": size[1],
            "batch": batch, "in_channels": 3}
  elif name == "carvana":
    spec = _carvana_spec()
  elif name == "tiny":  # For the unit tests: compiles and runs in seconds.
    spec = {**_MODEL, "features": 4, "depth": 2, "height": 16, "width": 16, "batch": 2,
            "in_channels": 1}
  else:
    raise ValueError(f"unknown preset {name!r}; choose tgs, classic, carvana or tiny")
  return {**spec, "seed": 0}


class Worker:
  """One variant in its own spawned process, driven over a pipe."""

  def __init__(self, context, name: str, spec: dict, build_lock=None):
    self.name = name
    self.conn, child = context.Pipe()
    self.process = context.Process(target=variants.worker, args=(child, name, spec, build_lock),
                                   daemon=True)
    self.process.start()
    self.info, self.error = None, None

  def wait_ready(self, timeout: float):
    if not self.conn.poll(timeout):
      self.error = f"no first step within {timeout:.0f} s"
      self.process.kill()  # It may hold the build lock or the device.
      return
    try:
      status, payload = self.conn.recv()
    except EOFError:
      self.process.join(timeout=10)
      status, payload = "error", f"worker died (exit code {self.process.exitcode})"
    if status == "ready":
      self.info = payload
    else:
      self.error = payload

  def call(self, *command):
    self.conn.send(command)
    status, payload = self.conn.recv()
    if status != "ok":
      raise RuntimeError(f"{self.name}: {payload}")
    return payload

  def stop(self):
    if self.error is None and self.process.is_alive():
      try:
        self.call("stop")
      except (RuntimeError, EOFError, OSError):
        pass
    self.process.join(timeout=30 if self.error is None else 1)  # A stuck build: no waiting.
    if self.process.is_alive():
      self.process.kill()


class NotBuilt:
  """A variant left out because the build budget ran out before its turn."""

  def __init__(self, name: str, reason: str):
    self.name, self.error, self.info = name, reason, None

  def stop(self):
    pass


def _meets_minimum(protocol, platform: str) -> bool:
  """At least 20 (CPU) / 100 (GPU) timed steps per round and 3 rounds, as issue 5 asks."""
  minimum = _GPU_PROTOCOL if platform == "gpu" else _CPU_PROTOCOL
  return (protocol["timed_steps"] >= minimum["timed_steps"] and
          protocol["repeats"] >= minimum["repeats"])


def _matmul_peak(workers, size: int, inner: int = 1) -> dict:
  """Best measured matmul GFLOP/s per dtype over the frameworks: the MFU denominators."""
  measured = {}
  for framework in ("jax", "torch"):
    for worker in workers:
      if worker.info is not None and variants.VARIANTS[worker.name][0] == framework:
        measured[framework] = worker.call("matmul_peak", size, 8, inner)
        break
  best = {dtype: max((m[dtype] for m in measured.values()), default=None)
          for dtype in ("fp32", "bf16")}
  return {"measured_gflops": measured, "peak_gflops": best,
          "method": f"best-of-8 blocks of {inner} random {size}x{size} square matmuls, fp32 "
                    "(each framework's default precision) and bf16, best framework"}


def _time_rounds(workers, protocol, spec, log) -> dict[str, list[float]]:
  """Interleaved timed blocks: `repeats` rounds, each a rotation of the variant order."""
  runs = {worker.name: [] for worker in workers}
  live = [worker for worker in workers if worker.error is None]
  for worker in live:
    worker.call("run", protocol["warmup_steps"])
  for round_index in range(protocol["repeats"]):
    shift = round_index % max(len(live), 1)
    for worker in live[shift:] + live[:shift]:
      seconds = worker.call("run", protocol["timed_steps"])
      runs[worker.name].append(protocol["timed_steps"] * spec["batch"] / seconds)
      log(f"  round {round_index + 1}: {worker.name:24s} {runs[worker.name][-1]:8.2f} img/s")
  return runs


def _variant_result(worker, img_per_s, train_flops, peak, spec) -> dict:
  framework, label, options = variants.VARIANTS[worker.name]
  dtype = "bf16" if options.get("bf16") or options.get("autocast") else "fp32"
  result = {"variant": worker.name, "framework": framework, "label": label,
            "compute_dtype": dtype, "host_malloc": options.get("malloc", "system"),
            "status": "ok" if worker.error is None else "failed"}
  if worker.error is not None:
    return {**result, "error": worker.error.strip().splitlines()[-1], "traceback": worker.error}
  median = statistics.median(img_per_s)
  peak_gflops = peak.get(dtype)
  achieved = median * train_flops / 1e9
  memory_mib, memory_method = worker.call("memory")
  result.update({
      "compile_s": worker.info.get("compile_s"),
      "first_step_s": worker.info["first_step_s"],
      "img_per_s": {"median": median, "min": min(img_per_s), "max": max(img_per_s),
                    "runs": img_per_s},
      "step_ms_median": 1e3 * spec["batch"] / median,
      "achieved_gflops": achieved,
      "mfu": achieved / peak_gflops if peak_gflops else None,
      "peak_memory_mib": memory_mib, "peak_memory_method": memory_method,
      "worker_info": worker.info,
  })
  return result


def summarize(results) -> dict:
  """Best JAX and PyTorch variants and their ratio (fp32 JAX too, where it ran)."""
  def best(framework):
    done = [r for r in results if r["framework"] == framework and r["status"] == "ok"]
    return max(done, key=lambda r: r["img_per_s"]["median"]) if done else None
  best_jax, best_torch = best("jax"), best("torch")
  summary = {"best_jax": best_jax and best_jax["variant"],
             "best_torch": best_torch and best_torch["variant"], "ratio_jax_to_best_torch": None}
  if best_jax and best_torch:
    summary["ratio_jax_to_best_torch"] = (best_jax["img_per_s"]["median"] /
                                          best_torch["img_per_s"]["median"])
    jax_fp32 = next((r for r in results if r["variant"] == "jax_fp32" and r["status"] == "ok"),
                    None)
    if jax_fp32:
      summary["ratio_jax_fp32_to_best_torch"] = (jax_fp32["img_per_s"]["median"] /
                                                 best_torch["img_per_s"]["median"])
  return summary


def _build_workers(context, names, spec, ready_timeout, deadline, overlap_imports, log):
  """Starts and builds the variants' workers, one build at a time; those whose turn comes
  after `deadline` (a time.perf_counter() value) are NotBuilt. overlap_imports: every
  process starts at once and imports meanwhile (a many-core GPU host), builds still in turn."""
  lock = context.Lock() if overlap_imports else None
  pending = [Worker(context, name, spec, lock) for name in names] if overlap_imports else []
  workers = []
  for index, name in enumerate(names):  # One at a time: no compile time inflated by another.
    left = (deadline - time.perf_counter()) if deadline is not None else ready_timeout
    if left <= 0:
      workers.append(NotBuilt(name, "not built: the time budget was spent"))
      if pending:
        pending[index].error = workers[-1].error
        pending[index].stop()
      log(f"  skipped {name}: the time budget was spent")
      continue
    worker = pending[index] if pending else Worker(context, name, spec)
    worker.wait_ready(min(ready_timeout, left))
    workers.append(worker)
    log(f"  built {name}: " + (f"first step {worker.info['first_step_s']:.1f} s"
                               if worker.error is None else "FAILED " +
                               worker.error.strip().splitlines()[-1]))
  return workers


def run(preset: str = "tgs", out_dir=None, warmup_steps=None, timed_steps=None, repeats=None,
        variant_names=None, ready_timeout: float = 1800.0, spec_overrides=None,
        quiet: bool = False, note: str = "", deadline=None, overlap_imports: bool = False,
        slug=None, matmul_size=None) -> dict:
  """Runs the benchmark, writes <out_dir>/<slug>/<preset>.{json,md,png}, returns the report.

  deadline: a time.perf_counter() value after which no further variant is built (they are
  reported as not built); overlap_imports: see _build_workers; slug overrides the device's;
  matmul_size: of the peak measurement (default 2048 on a CPU, 8192 on a GPU).
  """
  log = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
  device = machine.detect_device()
  environment_start = machine.environment()
  protocol = dict(_GPU_PROTOCOL if device["platform"] == "gpu" else _CPU_PROTOCOL)
  # A GPU needs a large product, several per timed block, to show its peak.
  on_gpu = device["platform"] == "gpu"
  protocol["matmul_size"] = matmul_size or (512 if preset == "tiny" else
                                            8192 if on_gpu else 2048)
  protocol["matmul_inner"] = 10 if on_gpu else 1
  for key, value in (("warmup_steps", warmup_steps), ("timed_steps", timed_steps),
                     ("repeats", repeats)):
    if value is not None:
      protocol[key] = value
  spec = {**preset_spec(preset, device["platform"]), **(spec_overrides or {}),
          "threads": device["cores"]}
  names = list(variant_names or variants.VARIANTS)
  log(f"{preset} on {device['name']} ({device['slug']}), load {environment_start['loadavg']}")
  started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()

  context = multiprocessing.get_context("spawn")
  workers = []
  try:
    workers = _build_workers(context, names, spec, ready_timeout, deadline, overlap_imports,
                             log)
    peak = _matmul_peak(workers, protocol["matmul_size"], protocol["matmul_inner"])
    if on_gpu and machine.gpu_peak_tflops(device["name"]):  # For reference; MFU uses measured.
      peak["datasheet_gflops"] = {k: v * 1e3
                                  for k, v in machine.gpu_peak_tflops(device["name"]).items()}
    runs = _time_rounds(workers, protocol, spec, log)
    train = flops.train_flops(spec["height"], spec["width"], spec["in_channels"],
                              spec["features"], spec["depth"], spec["padding"], spec["upsample"])
    results = [_variant_result(w, runs[w.name], train, peak["peak_gflops"], spec)
               for w in workers]
  finally:
    for worker in workers:
      worker.stop()

  xla = next((w.info.get("xla_flops_per_step") for w in workers
              if w.name == "jax_fp32" and w.info), None)
  xla_per_image = xla / spec["batch"] if xla else None
  forward, _ = flops.forward_flops(spec["height"], spec["width"], spec["in_channels"],
                                   spec["features"], spec["depth"], spec["padding"],
                                   spec["upsample"])
  torch_info = next((w.info for w in workers if w.info and "torch_threads" in w.info), {})
  data = {
      "schema_version": SCHEMA_VERSION,
      "preset": preset,
      "note": note,
      "config": {**{k: v for k, v in spec.items() if k != "threads"}, "num_classes": 1,
                 "loss": "sigmoid BCE with logits, mean over pixels",
                 "optimizer": f"Adam(lr={variants.LEARNING_RATE}, eps=1e-8)",
                 "batch_norm": "train mode, flax momentum 0.9 = torch momentum 0.1, eps 1e-5",
                 "input": "float32 images in [0, 255], x / 127.5 - 1 inside the step"},
      "device": device,
      "environment": {
          "started_utc": started.isoformat(timespec="seconds"),
          "wall_s": time.perf_counter() - clock,
          "loadavg_start": environment_start["loadavg"],
          "loadavg_end": list(os.getloadavg()),
          "versions": machine.versions(),
          "env": environment_start["env"],
          "threads": {"torch_intra_op": torch_info.get("torch_threads"),
                      "torch_interop": torch_info.get("torch_interop_threads"),
                      "jax_xla_cpu": "XLA default (one intra-op thread per usable core)",
                      "usable_cores": device["cores"]},
          "command": " ".join(sys.argv),
      },
      "protocol": {**protocol, "interleaved": True, "process_per_variant": True,
                   "imports_overlapped": overlap_imports,
                   "meets_issue_minimum": _meets_minimum(protocol, device["platform"])},
      "flops": {"train_per_image": train, "forward_per_image": forward,
                "formula": "3 * forward conv FLOPs - first conv forward (benchmarks/flops.py)",
                "xla_cost_analysis_per_image": xla_per_image,
                "xla_to_formula": xla_per_image / train if xla_per_image else None},
      "peak": peak,
      "results": results,
  }
  data["summary"] = summarize(results)
  paths = report.write(data, pathlib.Path(out_dir or RESULTS) / (slug or device["slug"]))
  log(report.markdown(data))
  log(f"wrote {', '.join(str(p) for p in paths)}")
  return data


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tgs", choices=("tgs", "classic", "carvana", "tiny"))
  parser.add_argument("--out-dir", default=None, help=f"default {RESULTS}")
  parser.add_argument("--warmup-steps", type=int)
  parser.add_argument("--timed-steps", type=int)
  parser.add_argument("--repeats", type=int)
  parser.add_argument("--variants", nargs="+", choices=list(variants.VARIANTS))
  parser.add_argument("--note", default="", help="free text stored in the report")
  args = parser.parse_args(argv)
  run(args.preset, args.out_dir, args.warmup_steps, args.timed_steps, args.repeats,
      args.variants, note=args.note)


if __name__ == "__main__":
  main()
