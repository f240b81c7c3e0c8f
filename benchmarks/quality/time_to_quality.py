"""Time to quality on TGS: the project's JAX training against its PyTorch twin, same recipe.

  python benchmarks/quality/time_to_quality.py                       # configs/tgs.py, 600 s each
  python benchmarks/quality/time_to_quality.py --budget_s=300 --config.model.features=16
  # The committed run: a schedule that ends near the budget, so both curves settle.
  python benchmarks/quality/time_to_quality.py --config.num_train_steps=700 \
      --config.model.dtype=bfloat16 --config.host_malloc=reuse --config.data_dir=<prepared>

Both frameworks train the config's model from the same initial weights (ported to torch)
with the same loss, optimizer, learning-rate schedule, batch size and the same batches in the
same order (the project's grain pipeline), each for `budget_s` seconds of training on the
same cores, one after the other, each in its own spawned process (benchmarks/quality/quality_workers).
Validation (IoU and the TGS metric on the stored 101x101 pixels, both scored by
unet_jax.steps.eval_step) runs at `evals` evenly spaced points of training time and is timed
apart. Each extra seed of --seeds adds a torch run with that seed (initial weights and data
order), to measure the seed-to-seed spread. Writes
benchmarks/results/<device-slug>/time_to_quality_<dataset>.{json,md,png}.
"""

import datetime
import multiprocessing
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/quality/time_to_quality.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

# pylint: disable=wrong-import-position
from benchmarks import machine
from benchmarks.quality import quality_report, quality_summary, quality_workers
from unet_jax import precision

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA_VERSION = 1
# PyTorch's fastest variant of the step benchmark (benchmarks/results/*/tgs.md): autocast bf16
# where the CPU computes bf16 natively, as the JAX side's model.dtype=auto does; float32 on the
# others (AVX2), where torch would emulate it.
TORCH_DEFAULTS = {"autocast": bool(set(precision.BF16_CPU_FLAGS) & precision.cpu_flags()),
                  "channels_last": True, "malloc": "reuse"}


def eval_points(budget_s: float, evals: int) -> list[float]:
  """`evals` evenly spaced points of training time, the last at the budget."""
  return [budget_s * (i + 1) / evals for i in range(evals)]


def _runs(config, seeds, torch_options, threads) -> list[dict]:
  """JAX with seeds[0], then torch with each seed (the first is the twin of the JAX run)."""
  runs = [{"name": "jax", "framework": "jax", "seed": seeds[0], "label": "JAX (project train)",
           "options": {"threads": threads, "malloc": config.host_malloc}}]
  for seed in seeds:
    label = ("PyTorch " + ", ".join(
        (["autocast bf16"] if torch_options["autocast"] else ["fp32"]) +
        (["channels_last"] if torch_options["channels_last"] else []) +
        [f"{torch_options['malloc']} malloc"]) + f", seed {seed}")
    runs.append({"name": f"torch_seed{seed}", "framework": "torch", "seed": seed,
                 "label": label, "options": {**torch_options, "threads": threads}})
  return runs


def _run_one(context, run, config, budget_s, points, timeout_s) -> dict:
  """One run in a fresh spawned process; its result, or its error."""
  seeded = config.copy_and_resolve_references()
  with seeded.unlocked():
    seeded.seed = run["seed"]
  parent, child = context.Pipe()
  process = context.Process(target=quality_workers.worker, daemon=True,
                            args=(child, run["framework"], seeded, budget_s, points,
                                  run["options"]))
  process.start()
  try:
    if not parent.poll(timeout_s):
      status, payload = "error", f"no result within {timeout_s:.0f} s"
    else:
      status, payload = parent.recv()
  except EOFError:
    status, payload = "error", f"worker died (exit code {process.exitcode})"
  finally:
    process.join(timeout=30)
    if process.is_alive():
      process.kill()
  result = {key: value for key, value in run.items() if key != "options"}
  result["options"] = run["options"]
  if status != "ok":
    return {**result, "status": "failed", "error": payload.strip().splitlines()[-1],
            "traceback": payload}
  return {**result, "status": "ok", **payload}


def _config_record(config) -> dict:
  keys = ("dataset", "image_size", "batch_size", "eval_batch_size", "loss", "optimizer",
          "learning_rate", "schedule", "warmup_steps", "num_train_steps", "adam_eps",
          "host_malloc")
  return {**{key: config[key] for key in keys}, "model": config.model.to_dict()}


def run(config, out_dir=None, budget_s: float = 600.0, evals: int = 10, seeds=(0, 1),
        threads: int | None = None, torch_options=None, quiet: bool = False,
        note: str = "") -> dict:
  """Runs every side, writes <out_dir>/<slug>/time_to_quality_<dataset>.*, returns the data."""
  log = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
  device = machine.detect_device()
  threads = threads or device["cores"]
  environment = machine.environment()
  started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
  points = eval_points(budget_s, evals)
  runs = _runs(config, list(seeds), {**TORCH_DEFAULTS, **(torch_options or {})}, threads)
  context = multiprocessing.get_context("spawn")
  results = []
  for spec in runs:  # One at a time: each has the cores to itself.
    log(f"{spec['label']}: {budget_s:.0f} s of training, {evals} evaluations")
    result = _run_one(context, spec, config, budget_s, points, timeout_s=3 * budget_s + 1800)
    results.append(result)
    log(f"  {result['status']}: " + (quality_report.run_line(result) if result["status"] == "ok"
                                      else result["error"]))
  data = {
      "schema_version": SCHEMA_VERSION,
      "benchmark": "time_to_quality",
      "note": note,
      "config": _config_record(config),
      "protocol": {"budget_s": budget_s, "eval_points_s": points, "threads": threads,
                   "seeds": list(seeds), "torch_options": runs[-1]["options"],
                   "clock": "training only: starts at step 1 (after setup: data, init, "
                            "JAX compile, torch model build), pauses for every evaluation",
                   "scored_on": "validation split, the stored 101x101 pixels for TGS"},
      "device": device,
      "environment": {"started_utc": started.isoformat(timespec="seconds"),
                      "wall_s": time.perf_counter() - clock,
                      "loadavg_start": environment["loadavg"],
                      "loadavg_end": list(os.getloadavg()), "versions": machine.versions(),
                      "env": environment["env"], "command": " ".join(sys.argv)},
      "runs": results,
  }
  data["summary"] = quality_summary.summarize(results)
  paths = quality_report.write(data, pathlib.Path(out_dir or RESULTS) / device["slug"],
                               f"time_to_quality_{config.dataset}")
  log(quality_report.markdown(data))
  log(f"wrote {', '.join(str(p) for p in paths)}")
  return data


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from unet_jax import cli  # pylint: disable=import-outside-toplevel
  cli.reject_extra_args(argv)
  flag = flags.FLAGS
  run(flag.config, flag.out, flag.budget_s, flag.evals, [int(s) for s in flag.seeds],
      flag.threads, {"autocast": flag.torch_autocast, "channels_last": flag.torch_channels_last,
                     "malloc": flag.torch_malloc}, note=flag.note)


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", str(REPO / "configs" / "tgs.py"),
                                  "Training config; override fields with --config.x=y.",
                                  lock_config=True)
  flags.DEFINE_float("budget_s", 600.0, "Seconds of training per run (evaluation excluded).")
  flags.DEFINE_integer("evals", 10, "Evaluations per run, evenly spaced in training time.")
  flags.DEFINE_list("seeds", ["0", "1"], "Seed of the JAX run and its torch twin, then one "
                    "more torch run per further seed (the seed spread).")
  flags.DEFINE_integer("threads", None, "Cores for each run (default: all usable).")
  flags.DEFINE_string("out", None, f"Results root (default {RESULTS}).")
  flags.DEFINE_bool("torch_autocast", TORCH_DEFAULTS["autocast"], "torch: autocast bf16.")
  flags.DEFINE_bool("torch_channels_last", TORCH_DEFAULTS["channels_last"],
                    "torch: channels_last memory format.")
  flags.DEFINE_enum("torch_malloc", TORCH_DEFAULTS["malloc"], ["system", "reuse"],
                    "torch: unet_jax.host_memory setting.")
  flags.DEFINE_string("note", "", "Free text stored in the report.")


if __name__ == "__main__":
  from unet_jax import cli as _cli  # pylint: disable=import-outside-toplevel
  _define_flags()
  _cli.run(main)
