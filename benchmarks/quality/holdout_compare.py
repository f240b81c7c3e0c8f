"""A fold ensemble against single models, all scored on a holdout that none of them trained on.

  python -m unet_jax.cross_validate --config configs/tgs.py --workdir runs/cv/holdout \\
      --num_folds 3 --config.fold_holdout=True --tta flip --threshold_search \\
      --threshold_metric tgs_map --min_areas 0,40,80
  python -m unet_jax.main --config configs/tgs.py --workdir runs/single   # all train ids
  python -m unet_jax.evaluate --workdir runs/single --tta flip --threshold_search \\
      --threshold_metric tgs_map --min_areas 0,40,80 [--checkpoint latest]
  python benchmarks/quality/holdout_compare.py --ensemble runs/cv/holdout \\
      --single single=runs/single [--single single_latest=runs/single@latest] \\
      --out benchmarks/results/<device>/tgs_holdout_ensemble

The single models' validation split is the prepared val split, which is the folds' holdout, so
every row is scored on the same images. Post-processed: each row at the threshold and minimum
area the folds chose on their own validation folds, never tuned on the holdout. A single model's
best checkpoint was chosen on the holdout itself (a slight optimism); @latest reads its last.
Writes <out>.md, .json and .png.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
# pylint: disable=wrong-import-position
from benchmarks import machine
from unet_jax import plots

COLUMNS = ("tgs_map", "postprocessed", "iou", "dice", "tgs_map_empty", "tgs_map_salt")


def _minutes(run_dir: pathlib.Path) -> float | None:
  """Wall minutes of a training run: its config written to its last metrics line."""
  config, metrics = run_dir / "config.json", run_dir / "metrics.jsonl"
  if not (config.exists() and metrics.exists()):
    return None
  return (metrics.stat().st_mtime - config.stat().st_mtime) / 60


def load_ensemble(workdir: pathlib.Path) -> dict:
  """cross_validate's holdout scores (flip TTA when it was scored so)."""
  for name in ("holdout_scores_tta.json", "holdout_scores.json"):
    if (workdir / name).exists():
      holdout = json.loads((workdir / name).read_text())
      break
  else:
    raise SystemExit(f"{workdir}: no holdout_scores*.json; run cross_validate with "
                     "--config.fold_holdout=True first")
  if not holdout["postprocess"]:
    raise SystemExit(f"{workdir}: the folds were not threshold-searched; rerun cross_validate "
                     "with --threshold_search --min_areas ...")
  folds = sorted(holdout["folds"], key=int)
  steps = json.loads((workdir / f"fold{folds[0]}" / "config.json").read_text())["num_train_steps"]
  minutes = [m for m in (_minutes(workdir / f"fold{k}") for k in folds) if m is not None]
  return {**holdout, "steps": steps, "minutes": sum(minutes) if minutes else None}


def load_single(spec: str, post: dict) -> tuple[str, dict]:
  """name=workdir[@checkpoint label]: its evaluate report on the holdout, post-processed at the
  folds' choice."""
  name, _, workdir = spec.partition("=")
  workdir, _, label = workdir.partition("@")
  run_dir = pathlib.Path(workdir)
  suffix = f"_{label}" if label else ""
  path = run_dir / "eval" / f"val_tta{suffix}_metrics.json"
  if not path.exists():
    raise SystemExit(f"{path} is missing; run python -m unet_jax.evaluate --workdir {workdir} "
                     "--tta flip --threshold_search --min_areas ...")
  report = json.loads(path.read_text())
  rows = report.get("threshold_search", {}).get("rows", [])
  row = next((r for r in rows if (r["threshold"], r.get("min_area", 0))
              == (post["threshold"], post["min_area"])), None)
  if row is None:
    raise SystemExit(f"{path}: threshold {post['threshold']} / {post['min_area']} px was not "
                     "searched; rerun evaluate with that area in --min_areas")
  scores = {m: report["scores"][m] for m in COLUMNS if m in report["scores"]}
  scores["postprocessed"] = row[post["metric"]]
  config = json.loads((run_dir / "config.json").read_text())
  return name, {"scores": scores, "step": report["step"], "steps": config["num_train_steps"],
                "minutes": _minutes(run_dir), "examples": report["examples"]}


def markdown(ensemble: dict, singles: dict) -> str:
  post = ensemble["postprocess"]
  count = len(ensemble["folds"])
  lines = [f"# A {count}-fold ensemble against single models on a {ensemble['examples']}-image "
           "holdout", "",
           f"Machine: {machine.cpu_model()}, {machine.usable_cores()} cores. Every row scored on "
           "the same held-out images, none of which any model trained on; flip TTA. "
           f"post-processed: the TGS metric at threshold {post['threshold']:.2f} and minimum "
           f"area {post['min_area']} px, the pair the folds chose on their own validation "
           "folds. Each fold trains on (K-1)/K of the train split; a single model on all of it "
           "(its best checkpoint chosen on this holdout, @latest its last). minutes: wall time "
           "of training, evaluations included.", "",
           "| model | training steps | minutes | " + " | ".join(COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 3) + "|"]

  def row(label, steps, minutes, scores):
    cells = [f"{scores[m]:.4f}" if m in scores else "-" for m in COLUMNS]
    shown = f"{minutes:.1f}" if minutes else "-"
    return f"| {label} | {steps} | {shown} | " + " | ".join(cells) + " |"

  for k, scores in ensemble["folds"].items():
    lines.append(row(f"fold {k}", ensemble["steps"], None, scores))
  lines.append(f"| mean +- std of the folds | {ensemble['steps']} | | " + " | ".join(
      f"{ensemble['mean'][m]:.4f} +- {ensemble['std'][m]:.4f}" if m in ensemble["mean"] else "-"
      for m in COLUMNS) + " |")
  lines.append(row(f"**ensemble of {count} folds**", f"{count} x {ensemble['steps']}",
                   ensemble["minutes"], ensemble["ensemble"]))
  for name, single in singles.items():
    lines.append(row(name, single["steps"], single["minutes"], single["scores"]))
  lines += ["", "Ensemble gain over the mean fold: " + ", ".join(
      f"{m} {ensemble['ensemble_gain'][m]:+.4f}" for m in COLUMNS if m in ensemble["ensemble_gain"])
      + "."]
  for name, single in singles.items():
    lines.append(f"Ensemble minus {name}: " + ", ".join(
        f"{m} {ensemble['ensemble'][m] - single['scores'][m]:+.4f}" for m in COLUMNS
        if m in ensemble["ensemble"] and m in single["scores"]) + ".")
  return "\n".join(lines) + "\n"


def plot(ensemble: dict, singles: dict, out_path: pathlib.Path) -> None:
  folds = [scores["postprocessed"] for scores in ensemble["folds"].values()]
  names = ["folds (mean)", f"ensemble of {len(folds)}"] + list(singles)
  means = ([ensemble["mean"]["postprocessed"], ensemble["ensemble"]["postprocessed"]]
           + [s["scores"]["postprocessed"] for s in singles.values()])
  stds = [ensemble["std"]["postprocessed"]] + [0.0] * (len(names) - 1)
  per_fold = [folds] + [[m] for m in means[1:]]
  plots.plot_cv_candidates(names, means, stds, per_fold, "TGS metric on the holdout "
                           "(flip TTA, post-processed)", out_path)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ensemble", required=True, help="cross_validate workdir (fold_holdout).")
  parser.add_argument("--single", action="append", default=[],
                      help="name=workdir[@latest]: a model trained on the whole train split.")
  parser.add_argument("--out", required=True, help="Output path without suffix.")
  args = parser.parse_args(argv)
  ensemble = load_ensemble(pathlib.Path(args.ensemble))
  singles = dict(load_single(spec, ensemble["postprocess"]) for spec in args.single)
  for name, single in singles.items():
    if single["examples"] != ensemble["examples"]:
      raise SystemExit(f"{name} was scored on {single['examples']} images, the folds' holdout "
                       f"has {ensemble['examples']}: not the same split")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  table = markdown(ensemble, singles)
  out.with_suffix(".md").write_text(table)
  out.with_suffix(".json").write_text(json.dumps({"ensemble": ensemble, "singles": singles},
                                                 indent=2) + "\n")
  plot(ensemble, singles, out.with_suffix(".png"))
  print(table, end="")


if __name__ == "__main__":
  main()
