"""Cross-validated candidates side by side: which lever beats the fold-to-fold spread.

  python -m unet_jax.cross_validate --config configs/tgs.py --workdir runs/cv/base --num_folds 3 \\
      --tta flip --threshold_search --threshold_metric tgs_map --min_areas 0,10,20,40,80,160
  (the same for each candidate, with its --config.<field> overrides), then
  python benchmarks/quality/cv_compare.py --run base=runs/cv/base --run residual=runs/cv/residual \\
      --baseline base --out benchmarks/results/<device>/tgs_cv

A workdir ending in @<label> reads the scores of other weights than the best, e.g.
runs/cv/base@average3 for `cross_validate --checkpoint average:3` (cv_scores_tta_average3.json).
A committed report's candidate stands in for its workdir as <report>.json#<name>, e.g.
--run reg=benchmarks/results/<device>/tgs_cv_2000.json#reg, so a new lever is paired with a
baseline cross-validated in an earlier session on the same folds.
Every candidate must have been cross-validated on the same folds, so fold k of one is paired
with fold k of the baseline: a lever is kept when its mean paired gain in the TGS metric is
positive and larger than the standard deviation of those gains over the folds (it wins on
most folds by more than it wobbles). Writes <out>.md, .json and .png (scores with error bars).
"""

import argparse
import json
import pathlib
import re
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
# pylint: disable=wrong-import-position
from benchmarks import machine
from unet_jax import plots

METRICS = ("tgs_map", "iou", "dice")


def load_candidate(workdir: pathlib.Path, label: str = "") -> dict:
  """A cross_validate workdir's fold scores (flip TTA if scored), post-processing and timing;
  `label` picks the scores of other weights (e.g. 'average3')."""
  suffix = f"_{label}" if label else ""
  for name in (f"cv_scores_tta{suffix}", f"cv_scores{suffix}"):
    if (workdir / f"{name}.json").exists():
      summary = json.loads((workdir / f"{name}.json").read_text())
      post_path = workdir / f"{name.replace('scores', 'postprocess')}.json"
      break
  else:
    raise SystemExit(f"{workdir}: no cv_scores{suffix}.json; run python -m "
                     "unet_jax.cross_validate first")
  config = json.loads((workdir / "fold0" / "config.json").read_text())
  minutes = [(f / "metrics.jsonl").stat().st_mtime - (f / "config.json").stat().st_mtime
             for f in sorted(workdir.glob("fold*")) if (f / "metrics.jsonl").exists()]
  return {"summary": summary, "config": config,
          "postprocess": json.loads(post_path.read_text()) if post_path.exists() else None,
          "minutes_per_fold": float(np.mean(minutes)) / 60 if minutes else None}


def load_reported(report: pathlib.Path, name: str, at: tuple | None) -> dict:
  """Candidate `name` of a committed cv_compare report (<report>.json), as load_candidate gives
  it plus its stored post-processing gain and, where scored at the same `at`, its fold scores."""
  if not report.exists():
    raise SystemExit(f"{report}: no such report; give a cv_compare .json or a workdir")
  runs = json.loads(report.read_text())
  if name not in runs:
    raise SystemExit(f"{report}: no candidate {name!r}; it holds {sorted(runs)}")
  run = dict(runs[name])
  run_at = run.get("at")
  if run_at is None and run.get("scores_at") is not None:  # Reports that named `at` in .md only.
    found = re.search(r"paired gain at t ([0-9.]+), ([0-9]+) px",
                      report.with_suffix(".md").read_text())
    run_at = (float(found.group(1)), int(found.group(2))) if found else None
  if at is None or run_at is None or tuple(run_at) != tuple(at):
    run["scores_at"] = None
  return run


def schedule_steps(run: dict):
  """The steps the folds were trained for (config.num_train_steps), not the step of the first
  fold's best checkpoint; committed reports without a config give their fold-0 step."""
  steps = (run.get("config") or {}).get("num_train_steps")
  return steps if steps is not None else next(iter(run["summary"]["steps"].values()))


def paired_gain(candidate: dict, baseline: dict, metric: str = "tgs_map") -> dict:
  folds = sorted(set(candidate["summary"]["folds"]) & set(baseline["summary"]["folds"]))
  scores = candidate["summary"]["folds"], baseline["summary"]["folds"]
  gains = np.array([scores[0][k][metric] - scores[1][k][metric] for k in folds])
  std = float(gains.std(ddof=1)) if len(gains) > 1 else float("inf")
  mean = float(gains.mean())
  return {"folds": len(folds), "mean": mean, "std": std, "kept": bool(mean > 0 and mean > std)}


def fold_scores_at(workdir: pathlib.Path, threshold: float, min_area: int,
                   label: str = "") -> list[float] | None:
  """Each fold's TGS metric at (threshold, min_area), from its threshold search; None if the
  folds were not searched."""
  scores = []
  suffix = f"_{label}" if label else ""
  for fold_dir in sorted(workdir.glob("fold*")):
    for name in (f"val_tta{suffix}_metrics.json", f"val{suffix}_metrics.json"):
      path = fold_dir / "eval" / name
      if path.exists() and "threshold_search" in json.loads(path.read_text()):
        rows = json.loads(path.read_text())["threshold_search"]["rows"]
        by_pair = {(r["threshold"], r.get("min_area", 0)): r["tgs_map"] for r in rows}
        if (threshold, min_area) not in by_pair:
          raise SystemExit(f"{path}: threshold {threshold} / {min_area} px was not searched; "
                           "rerun cross_validate with it in --min_areas")
        scores.append(by_pair[(threshold, min_area)])
        break
  return scores if len(scores) >= 2 else None


def _gain_summary(gains) -> dict:
  mean, std = float(np.mean(gains)), float(np.std(gains, ddof=1))
  return {"gains": [float(g) for g in gains], "mean": mean, "std": std,
          "kept": bool(mean > 0 and mean > std)}


def postprocess_gain(workdir: pathlib.Path, threshold: float, min_area: int,
                     label: str = "") -> dict | None:
  """Per-fold gain of (threshold, min_area) over (0.5, 0 px), from each fold's search."""
  post = fold_scores_at(workdir, threshold, min_area, label)
  plain = fold_scores_at(workdir, 0.5, 0, label)
  if post is None or plain is None:
    return None
  return _gain_summary(np.subtract(post, plain))


def gain_at(candidate: dict, baseline: dict) -> dict | None:
  """Paired per-fold gain with both scored at the same fixed post-processing (`--at`)."""
  if candidate.get("scores_at") is None or baseline.get("scores_at") is None:
    return None
  return _gain_summary(np.subtract(candidate["scores_at"], baseline["scores_at"]))


def markdown(runs: dict, baseline: str, at: tuple | None = None) -> str:
  first = next(iter(runs.values()))
  at_header = (f" | paired gain at t {at[0]:.2f}, {at[1]} px (TGS)" if at else "")
  folds = first["summary"]["num_folds"]
  lines = [f"# TGS cross-validation, {folds} folds (stratified by salt coverage), one schedule",
           "", f"Machine: {machine.cpu_model()}, {machine.usable_cores()} cores. Scores: best "
           "checkpoint on its held-out fold, flip TTA, threshold 0.5, mean +- std over folds. "
           "Paired gain: the candidate minus the baseline on the same fold; kept when its mean "
           "is positive and above its std over folds. Post-processed: the threshold and minimum "
           "mask area with the best mean TGS metric over folds (tuned on the same folds). "
           "min/fold: wall minutes per fold as run, other work sharing the cores included. "
           "TGS empty / salt: the metric on held-out images without / with salt (mean over "
           "folds; '-' where not scored)."
           + (f" Paired gain at t {at[0]:.2f}, {at[1]} px: both scored with that threshold and "
              "minimum mask area (what a config ships), per fold." if at else ""), "",
           "| candidate | overrides | steps | min/fold | " + " | ".join(METRICS)
           + f" | TGS empty / salt | paired gain vs {baseline} (TGS) | post-processed TGS"
           + at_header + " |", "|---" * (11 if at else 10) + "|"]
  for name, run in runs.items():
    summary = run["summary"]
    cells = [f"{summary['mean'][m]:.4f} +- {summary['std'][m]:.4f}" for m in METRICS]
    split = [summary["mean"].get(f"tgs_map_{part}") for part in ("empty", "salt")]
    cells.append(" / ".join(f"{v:.3f}" for v in split) if None not in split else "-")
    if name == baseline:
      gain = "(baseline)"
    else:
      g = paired_gain(run, runs[baseline])
      gain = f"{g['mean']:+.4f} +- {g['std']:.4f} {'kept' if g['kept'] else 'not kept'}"
    post = run["postprocess"]
    post_cell = (f"{post['best']['tgs_map']:.4f} (t {post['best']['threshold']:.2f}, "
                 f"{post['best']['min_area']} px)" if post else "-")
    minutes = f"{run['minutes_per_fold']:.1f}" if run["minutes_per_fold"] else "-"
    if at:
      g = gain_at(run, runs[baseline])
      post_cell += (" | (baseline)" if name == baseline else " | -" if g is None else
                    f" | {g['mean']:+.4f} +- {g['std']:.4f} {'kept' if g['kept'] else 'not kept'}")
    steps = schedule_steps(run)
    lines.append(f"| {name} | {run['overrides'] or '-'} | {steps} | {minutes} | "
                 + " | ".join(cells) + f" | {gain} | {post_cell} |")
  post = runs[baseline]["postprocess"]
  gain = runs[baseline].get("postprocess_gain")
  if post and gain:
    best = post["best"]
    lines += ["", f"Post-processing as a lever on {baseline}: threshold {best['threshold']:.2f} "
              f"and minimum area {best['min_area']} px against 0.50 and none, per fold "
              + ", ".join(f"{g:+.4f}" for g in gain["gains"])
              + f" (mean {gain['mean']:+.4f} +- {gain['std']:.4f}: "
              f"{'kept' if gain['kept'] else 'not kept'}; tuned on the same folds)."]
  return "\n".join(lines) + "\n"


def plot(runs: dict, out_path: pathlib.Path) -> None:
  names = list(runs)
  means = [runs[n]["summary"]["mean"]["tgs_map"] for n in names]
  stds = [runs[n]["summary"]["std"]["tgs_map"] for n in names]
  per_fold = [[f["tgs_map"] for f in runs[n]["summary"]["folds"].values()] for n in names]
  plots.plot_cv_candidates(names, means, stds, per_fold, "TGS metric (flip TTA)", out_path)


def _parse_at(text: str) -> tuple | None:
  if not text:
    return None
  try:
    threshold, min_area = text.split(",")
    return float(threshold), int(min_area)
  except ValueError:
    raise SystemExit(f"--at {text!r}: give THRESHOLD,MIN_AREA, e.g. --at 0.5,80") from None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", action="append", required=True,
                      help="name=workdir[@label][=overrides shown in the table]; the first is "
                      "listed first")
  parser.add_argument("--baseline", required=True, help="The name of the baseline run.")
  parser.add_argument("--out", required=True, help="Output path without suffix.")
  parser.add_argument("--at", default="", help="THRESHOLD,MIN_AREA: also pair the folds scored "
                      "at this fixed post-processing (e.g. 0.5,80, what configs/tgs.py ships)")
  args = parser.parse_args()
  at = _parse_at(args.at)
  runs = {}
  for spec in args.run:
    name, workdir, *overrides = spec.split("=", 2)
    if "#" in workdir:
      report, _, reported_name = workdir.partition("#")
      runs[name] = load_reported(pathlib.Path(report), reported_name, at)
      runs[name]["overrides"] = "".join(overrides) or runs[name].get("overrides", "")
      continue
    workdir, _, label = workdir.partition("@")
    runs[name] = {**load_candidate(pathlib.Path(workdir), label), "overrides": "".join(overrides)}
    if runs[name]["postprocess"]:
      best = runs[name]["postprocess"]["best"]
      runs[name]["postprocess_gain"] = postprocess_gain(pathlib.Path(workdir), best["threshold"],
                                                        best["min_area"], label)
    if at:
      runs[name]["scores_at"] = fold_scores_at(pathlib.Path(workdir), *at, label)
      runs[name]["at"] = list(at)
  if args.baseline not in runs:
    raise SystemExit(f"--baseline {args.baseline} is not one of the --run names {list(runs)}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  table = markdown(runs, args.baseline, at)
  out.with_suffix(".md").write_text(table)
  out.with_suffix(".json").write_text(json.dumps(
      {name: {k: v for k, v in run.items() if k != "config"} for name, run in runs.items()},
      indent=2) + "\n")
  plot(runs, out.with_suffix(".png"))
  print(table, end="")


if __name__ == "__main__":
  main()
