"""The CPU reference of gpu_check's end-to-end runs, and the GPU run's scores against it.

gpu_check trains configs/synthetic.py and configs/tgs.py for 300 steps on the GPU (bf16).
This trains the same configs for the same steps on the CPU, seed 0 (the GPU run's own seed:
the same initial weights, batches, augmentation and dropout; only the arithmetic differs) and
further seeds for the run-to-run spread, then puts the GPU run's validation scores beside
them: the paired difference (same seed) and the distance from the seeds' mean in their
standard deviations.

  python -m benchmarks.gpu.e2e_reference --tgs_dir ../shared/data/tgs \\
      --gpu_report benchmarks/results/gpu-h200/gpu_check.json \\
      --out benchmarks/results/<cpu slug>      # ~35 min on 2 cores (3 seeds each)
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks import machine  # pylint: disable=wrong-import-position
from benchmarks.gpu import gpu_e2e  # pylint: disable=wrong-import-position

METRICS = ("dice", "iou", "tgs_map")
WITHIN_STDS = 2.0  # The GPU score is within run-to-run noise if this close to the seeds' mean.


def seed_config(dataset: str, seed: int, steps: int, dtype: str, tiny: bool, data_dir):
  """gpu_e2e's config for `dataset`, with `seed`."""
  config = gpu_e2e.make_config(dataset, steps, dtype, tiny, data_dir)
  config.seed = seed
  return config


def check_same_run(config, gpu_run: dict) -> None:
  """Raises ValueError where `config` is not the one the GPU run trained (an older script)."""
  model_keys = {"features": None, "depth": None, "squeeze_excitation": False}  # Default: older.
  ours = {"batch_size": config.batch_size, "image_size": list(config.image_size),
          **{f"model.{k}": config.model[k] for k in model_keys}}
  theirs = {"batch_size": gpu_run["batch_size"], "image_size": gpu_run["image_size"],
            **{f"model.{k}": gpu_run["model"].get(k, v) for k, v in model_keys.items()}}
  if ours != theirs:
    raise ValueError(f"the GPU run trained {theirs}, this script's config is {ours}: compare "
                     "with a GPU report of the current gpu_e2e.make_config")


def train_seed(config, workdir: pathlib.Path) -> dict:
  """One CPU run of `config`: its final scores, validation curve and wall time."""
  from unet_jax import train  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  scores = train.train_and_evaluate(config, workdir)
  _, val_records = gpu_e2e._train_records(workdir)  # pylint: disable=protected-access
  return {"seed": config.seed, "train_wall_s": time.perf_counter() - start,
          "final_scores": {k: float(scores[k]) for k in METRICS if k in scores},
          "val_curve": [{k: r[k] for k in ("step", *METRICS) if k in r} for r in val_records]}


def compare(gpu_run: dict, cpu_runs: list[dict]) -> dict:
  """Per metric: the GPU score, the CPU's same-seed score and seeds' mean +- std, the paired
  difference, and whether the GPU score lies within WITHIN_STDS standard deviations."""
  rows = {}
  same_seed = cpu_runs[0]["final_scores"]
  for metric in METRICS:
    if metric not in gpu_run["final_scores"] or metric not in same_seed:
      continue
    values = [run["final_scores"][metric] for run in cpu_runs]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    gpu = gpu_run["final_scores"][metric]
    rows[metric] = {"gpu": gpu, "cpu_same_seed": same_seed[metric], "cpu_mean": mean,
                    "cpu_std": std, "cpu_seeds": values,
                    "paired_difference": gpu - same_seed[metric],
                    "stds_from_mean": (gpu - mean) / std if std else None,
                    "within_noise": abs(gpu - mean) <= WITHIN_STDS * std}
  return rows


def markdown(data: dict) -> str:
  lines = ["# GPU end-to-end runs against the CPU", "",
           f"CPU: {data['device']['name']} (`{data['device']['slug']}`), {data['dtype']}, "
           f"seeds {data['seeds']} (seed {data['seeds'][0]} is the GPU run's own: same initial "
           "weights, batches, augmentation and dropout). GPU report: "
           f"`{data['gpu_report']}` ({data['gpu_device']}, {data['gpu_dtype']}). Within noise: "
           f"the GPU score within {WITHIN_STDS:g} standard deviations of the CPU seeds' mean.",
           "", "| run | metric | GPU | CPU same seed | GPU - CPU same seed | CPU seeds mean +- std "
           "| GPU in CPU stds | within noise |", "|---|---|---:|---:|---:|---:|---:|---|"]
  for dataset, result in data["datasets"].items():
    for metric, row in result["comparison"].items():
      stds = row["stds_from_mean"]
      lines.append(
          f"| {dataset} ({result['steps']} steps, batch {result['batch_size']}) | {metric} | "
          f"{row['gpu']:.4f} | {row['cpu_same_seed']:.4f} | {row['paired_difference']:+.4f} | "
          f"{row['cpu_mean']:.4f} +- {row['cpu_std']:.4f} | "
          f"{'-' if stds is None else f'{stds:+.2f}'} | {'yes' if row['within_noise'] else 'NO'} |")
  lines += ["", "CPU wall time per run: " + ", ".join(
      f"{dataset} {statistics.fmean(r['train_wall_s'] for r in result['cpu_runs']):.0f} s"
      for dataset, result in data["datasets"].items()) + ".", ""]
  return "\n".join(lines)


def plot(data: dict, out_path: pathlib.Path) -> None:
  """Validation Dice per step: each CPU seed (grey, seed 0 dark) and the GPU run (red)."""
  from unet_jax import plots  # pylint: disable=import-outside-toplevel
  plt = plots.plt
  fig, axes = plt.subplots(1, len(data["datasets"]), figsize=(5 * len(data["datasets"]), 3.6),
                           squeeze=False)
  for ax, (dataset, result) in zip(axes[0], data["datasets"].items()):
    for run in result["cpu_runs"]:
      curve = run["val_curve"]
      ax.plot([p["step"] for p in curve], [p["dice"] for p in curve], marker="o",
              color="0.2" if run is result["cpu_runs"][0] else "0.65",
              label=f"CPU seed {run['seed']}")
    curve = result["gpu_run"]["val_curve"]
    ax.plot([p["step"] for p in curve], [p["dice"] for p in curve], marker="s", color="tab:red",
            label=f"GPU seed {data['seeds'][0]}")
    ax.set(title=dataset, xlabel="step", ylabel="validation Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  plots._save(fig, out_path)  # pylint: disable=protected-access


def run(gpu_report: pathlib.Path, out: pathlib.Path, tgs_dir=None, num_seeds: int = 3,
        datasets=("synthetic", "tgs")) -> dict:
  """Trains every dataset of the GPU report on the CPU for each seed (tiny models where the
  report is a dry run's); writes e2e_reference.{json,md,png} to `out`."""
  gpu = json.loads(pathlib.Path(gpu_report).read_text())
  tiny = gpu.get("dry_run", False)
  out.mkdir(parents=True, exist_ok=True)
  device = machine.detect_device()
  data = {"benchmark": "e2e_reference", "device": device, "gpu_report": str(gpu_report),
          "gpu_device": gpu["device"]["name"], "versions": machine.versions(),
          "datasets": {}}
  with tempfile.TemporaryDirectory(prefix="e2e_reference_") as scratch:
    scratch = pathlib.Path(scratch)
    for dataset in datasets:
      gpu_run = gpu["e2e"].get(dataset)
      if not gpu_run:
        print(f"{gpu_report} has no e2e run of {dataset}: skipped", flush=True)
        continue
      data_dir = gpu_e2e.prepare_data(dataset, tgs_dir, scratch)
      dtype = "float32" if device["platform"] == "cpu" else gpu_run["dtype"]
      base_seed = gpu_e2e.make_config(dataset, 1, dtype, tiny).seed
      seeds = [base_seed + i for i in range(num_seeds)]
      cpu_runs = []
      for seed in seeds:
        print(f"== {dataset} seed {seed}: {gpu_run['steps']} steps on {device['name']}",
              flush=True)
        config = seed_config(dataset, seed, gpu_run["steps"], dtype, tiny, data_dir)
        check_same_run(config, gpu_run)
        cpu_runs.append(train_seed(config, scratch / f"{dataset}_seed{seed}"))
      data.update(dtype=dtype, seeds=seeds, gpu_dtype=gpu_run["dtype"])
      data["datasets"][dataset] = {
          "steps": gpu_run["steps"], "batch_size": gpu_run["batch_size"], "gpu_run": gpu_run,
          "cpu_runs": cpu_runs, "comparison": compare(gpu_run, cpu_runs)}
  (out / "e2e_reference.json").write_text(json.dumps(data, indent=2) + "\n")
  (out / "e2e_reference.md").write_text(markdown(data))
  plot(data, out / "e2e_reference.png")
  return data


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gpu_report", required=True, help="A gpu_check.json with e2e runs.")
  parser.add_argument("--out", required=True, help="Folder for e2e_reference.{json,md,png}.")
  parser.add_argument("--tgs_dir", default=None, help="The TGS sample (train/, depths.csv).")
  parser.add_argument("--num_seeds", type=int, default=3)
  parser.add_argument("--datasets", default="synthetic,tgs")
  args = parser.parse_args(argv)
  datasets = [d for d in args.datasets.split(",") if d]
  if "tgs" in datasets and not (args.tgs_dir and (pathlib.Path(args.tgs_dir) / "train").is_dir()):
    parser.error("--tgs_dir must be the TGS sample's folder (train/images, train/masks), "
                 "or leave tgs out of --datasets")
  data = run(pathlib.Path(args.gpu_report), pathlib.Path(args.out), args.tgs_dir,
             args.num_seeds, datasets)
  print(markdown(data))
  return 0


if __name__ == "__main__":
  sys.exit(main())
