"""K-fold cross-validation: trains every fold of a config in turn, then tabulates their scores.

  python -m unet_jax.cross_validate --config configs/tgs.py --workdir runs/tgs_cv --num_folds 5

Fold k trains in workdir/fold<k> with `--config.num_folds=K --config.fold=k` (unet_jax/data/
folds.py: TGS stratified by coverage, Carvana by car, CamVid by sequence), so each fold resumes
like any run and a finished one is not trained again. Each fold's best checkpoint is then
scored on its held-out fold (optionally with flip TTA) and workdir/cv_scores.{json,md} give the
per-fold scores with their mean and standard deviation. `--threshold_search` (binary tasks, with
`--min_areas 0,10,20,40,80`) also scores every sigmoid threshold and minimum predicted area on
each fold and picks the pair with the best mean over folds: workdir/cv_postprocess.{json,md}.
`--checkpoint latest` or `average:N` (the mean weights of each fold's last N checkpoints; train
with --config.max_checkpoints >= N) scores other weights than the best, into files named
after them (cv_scores_tta_average3.json), beside the best's.
`--folds 0,1` runs some folds only (e.g. one per machine); the table covers every fold that has
finished. With `--config.fold_holdout=True` the folds are dealt from the prepared train split
only, and each fold and their ensemble are also scored on the prepared val split, which no fold
saw: workdir/holdout_scores.{json,md}. Predict with the folds as an ensemble:
python -m unet_jax.predict --workdir runs/tgs_cv/fold0 --workdir runs/tgs_cv/fold1 ...
"""

import copy
import json
import logging
import pathlib

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from unet_jax import budget, cli, evaluate, inference, resilience, train
from unet_jax.errors import ConfigError

TABLE_METRICS = ("tgs_map", "tgs_map_empty", "tgs_map_salt", "iou", "dice", "pixel_accuracy",
                 "miou", "loss")


def fold_config(config, num_folds: int, fold: int) -> ml_collections.ConfigDict:
  """A copy of `config` that trains fold `fold` of `num_folds` (references kept: a fitted time
  budget moves loss_stage2_step with num_train_steps)."""
  config = copy.deepcopy(config)
  config.num_folds, config.fold = num_folds, fold
  return config


def parse_folds(folds: str, num_folds: int) -> list[int]:
  """'' -> every fold; '0,2' -> [0, 2], checked against num_folds."""
  if num_folds < 2:
    raise ConfigError(f"--num_folds={num_folds}; cross-validation needs at least 2 folds")
  if not folds:
    return list(range(num_folds))
  try:
    chosen = sorted({int(f) for f in folds.split(",")})
  except ValueError:
    raise ConfigError(f"--folds={folds!r} is not a comma-separated list of fold numbers like "
                      "0,2") from None
  if chosen[0] < 0 or chosen[-1] >= num_folds:
    raise ConfigError(f"--folds={folds} names a fold outside 0..{num_folds - 1}")
  return chosen


def is_finished(workdir: pathlib.Path, num_train_steps: int) -> bool:
  return max(inference.saved_steps(workdir), default=0) >= num_train_steps


def summarize(reports: dict[int, dict]) -> dict:
  """{'folds': {k: scores}, 'mean': {...}, 'std': {...}} over the metrics every fold has."""
  names = [m for m in TABLE_METRICS if all(m in r["scores"] for r in reports.values())]
  folds = {k: {m: reports[k]["scores"][m] for m in names} for k in sorted(reports)}
  values = {m: np.array([scores[m] for scores in folds.values()]) for m in names}
  return {"folds": folds, "steps": {k: reports[k]["step"] for k in sorted(reports)},
          "mean": {m: float(v.mean()) for m, v in values.items()},
          "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()}}


def markdown(summary: dict, title: str) -> str:
  names = list(summary["mean"])
  lines = [f"# {title}", "", "| fold | step | " + " | ".join(names) + " |",
           "|---" * (len(names) + 2) + "|"]
  for fold, scores in summary["folds"].items():
    lines.append(f"| {fold} | {summary['steps'][fold]} | "
                 + " | ".join(f"{scores[m]:.4f}" for m in names) + " |")
  lines.append("| mean +- std | | " + " | ".join(
      f"{summary['mean'][m]:.4f} +- {summary['std'][m]:.4f}" for m in names) + " |")
  return "\n".join(lines) + "\n"


def postprocess_summary(reports: dict[int, dict]) -> dict:
  """The folds' threshold searches averaged row by row, and the row with the best mean."""
  searches = [reports[k]["threshold_search"] for k in sorted(reports)]
  metric = searches[0]["metric"]
  rows = []
  for i, row in enumerate(searches[0]["rows"]):
    per_fold = [search["rows"][i] for search in searches]
    assert all((r["threshold"], r["min_area"]) == (row["threshold"], row["min_area"])
               for r in per_fold)
    mean = {m: float(np.mean([r[m] for r in per_fold])) for m in evaluate.SWEEP_METRICS}
    rows.append({"threshold": row["threshold"], "min_area": row["min_area"], **mean,
                 f"{metric}_std": float(np.std([r[metric] for r in per_fold], ddof=1))
                 if len(per_fold) > 1 else 0.0})
  return {"metric": metric, "rows": rows, "best": max(rows, key=lambda row: row[metric])}


def write_postprocess(workdir: pathlib.Path, name: str, search: dict, folds: int) -> str:
  best = search["best"]
  title = (f"# Post-processing chosen by the mean over {folds} folds: threshold "
           f"{best['threshold']:.2f}, minimum area {best['min_area']} px -> {search['metric']} "
           f"{best[search['metric']]:.4f} +- {best[search['metric'] + '_std']:.4f}")
  table = "\n".join([title, "", "Scores are means over the folds' held-out data; the pair is "
                     "tuned on the same folds, so its gain over 0.50 / 0 px is an upper bound.",
                     ""] + evaluate.search_tables(search)) + "\n"
  (workdir / f"{name}.json").write_text(json.dumps(search, indent=2) + "\n")
  (workdir / f"{name}.md").write_text(table)
  return table


def holdout_scores(workdir: pathlib.Path, finished: list[int], tta: str, checkpoint: str,
                   postprocess: dict | None = None) -> dict:
  """Each finished fold and their ensemble (the mean of their probabilities) scored on the split
  'holdout' that no fold trained on (config.fold_holdout). With `postprocess` (the folds' own
  choice of threshold and minimum area, never tuned on the holdout) also the metric with it."""
  chosen = postprocess["best"] if postprocess else None

  def score(runs) -> tuple[dict, int]:
    report = evaluate.evaluate_run(
        runs, "holdout", chosen is not None, tta=tta, checkpoint=checkpoint,
        min_areas=(chosen["min_area"],) if chosen else (0,),
        threshold_metric=postprocess["metric"] if chosen else "")
    scores = {m: report["scores"][m] for m in TABLE_METRICS if m in report["scores"]}
    if chosen:
      row = next(r for r in report["threshold_search"]["rows"]
                 if r["threshold"] == chosen["threshold"])
      scores["postprocessed"] = row[postprocess["metric"]]
    return scores, report["examples"]

  runs = [workdir / f"fold{k}" for k in finished]
  folds = {k: score(run)[0] for k, run in zip(finished, runs)}
  ensemble, examples = score(runs)
  values = {m: np.array([folds[k][m] for k in finished]) for m in ensemble}
  mean = {m: float(v.mean()) for m, v in values.items()}
  return {"examples": examples, "folds": folds, "mean": mean,
          "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
          "ensemble": ensemble, "ensemble_gain": {m: ensemble[m] - mean[m] for m in ensemble},
          "postprocess": chosen and {"metric": postprocess["metric"],
                                     "threshold": chosen["threshold"],
                                     "min_area": chosen["min_area"]}}


def holdout_markdown(holdout: dict, title: str) -> str:
  names = list(holdout["ensemble"])
  lines = [f"# {title}", ""]
  if holdout["postprocess"]:
    post = holdout["postprocess"]
    lines += [f"postprocessed: {post['metric']} at the threshold ({post['threshold']:.2f}) and "
              f"minimum area ({post['min_area']} px) the folds chose on their own validation.", ""]
  lines += ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  row = lambda label, scores: f"| {label} | " + " | ".join(f"{scores[m]:.4f}" for m in names) + " |"
  lines += [row(f"fold {k}", scores) for k, scores in holdout["folds"].items()]
  lines.append("| mean +- std of the folds | " + " | ".join(
      f"{holdout['mean'][m]:.4f} +- {holdout['std'][m]:.4f}" for m in names) + " |")
  lines.append(row(f"ensemble of {len(holdout['folds'])} folds", holdout["ensemble"]))
  lines.append("| ensemble - mean | " + " | ".join(
      f"{holdout['ensemble_gain'][m]:+.4f}" for m in names) + " |")
  return "\n".join(lines) + "\n"


def cross_validate(config, workdir, num_folds: int, folds: str = "", tta: str = "none",
                   search: bool = False, min_areas=(0,), threshold_metric: str = "",
                   checkpoint: str = "best") -> dict:
  """Trains the chosen folds (resuming), scores every finished fold, writes the table(s)."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  inference.check_choice(checkpoint)  # Before hours of training, not after.
  for fold in parse_folds(folds, num_folds):
    fold_dir = workdir / f"fold{fold}"
    if is_finished(fold_dir, budget.planned_steps(config, fold_dir)):
      logging.info("fold %d of %d already trained in %s", fold, num_folds, fold_dir)
      continue
    logging.info("training fold %d of %d in %s", fold, num_folds, fold_dir)
    train.train_and_evaluate(fold_config(config, num_folds, fold), fold_dir)
    if resilience.StopRequests.last_signal_name is not None:  # SIGTERM or Ctrl-C.
      logging.info("%s: cross-validation stopped in fold %d; the later folds and the table "
                   "wait: rerun the same command to resume",
                   resilience.StopRequests.last_signal_name, fold)
      return {"num_folds": num_folds, "stopped_in_fold": fold}
  reports = {fold: evaluate.evaluate_run(workdir / f"fold{fold}", "val", search, tta=tta,
                                         min_areas=min_areas, threshold_metric=threshold_metric,
                                         checkpoint=checkpoint)
             for fold in range(num_folds)
             if is_finished(workdir / f"fold{fold}",
                            budget.planned_steps(config, workdir / f"fold{fold}"))}
  summary = {"num_folds": num_folds, "tta": tta, "checkpoint": checkpoint,
             "dataset": config.dataset, **summarize(reports)}
  suffix = ("_tta" if tta == "flip" else "") + inference.checkpoint_label(checkpoint)
  name = "cv_scores" + suffix
  averaged = inference.average_count(checkpoint)
  weights = (f"the mean of the last {averaged} checkpoints" if averaged
             else f"{checkpoint} checkpoints")
  title = (f"{config.dataset}: {len(reports)} of {num_folds} folds, {weights} on their "
           f"held-out fold{', flip TTA' if tta == 'flip' else ''}")
  table = markdown(summary, title)
  (workdir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
  (workdir / f"{name}.md").write_text(table)
  logging.info("cross-validation table in %s.md:\n%s", workdir / name, table)
  if search and reports:
    summary["postprocess"] = postprocess_summary(reports)
    post_name = "cv_postprocess" + suffix
    table = write_postprocess(workdir, post_name, summary["postprocess"], len(reports))
    logging.info("post-processing search in %s.md:\n%s", workdir / post_name, table)
  if config.get("fold_holdout", False) and reports:
    summary["holdout"] = holdout_scores(workdir, sorted(reports), tta, checkpoint,
                                        summary.get("postprocess"))
    holdout_name = "holdout_scores" + suffix
    table = holdout_markdown(summary["holdout"], (
        f"{config.dataset}: {len(reports)} folds and their ensemble on the holdout "
        f"({summary['holdout']['examples']} images no fold trained on), {weights}"
        f"{', flip TTA' if tta == 'flip' else ''}"))
    (workdir / f"{holdout_name}.json").write_text(json.dumps(summary["holdout"], indent=2) + "\n")
    (workdir / f"{holdout_name}.md").write_text(table)
    logging.info("holdout scores in %s.md:\n%s", workdir / holdout_name, table)
  return summary


def main(argv):
  cli.reject_extra_args(argv)
  f = flags.FLAGS
  with cli.exit_on_user_error():
    cross_validate(f.config, f.workdir, f.num_folds, f.folds, f.tta, f.threshold_search,
                   evaluate.parse_min_areas(f.min_areas), f.threshold_metric, f.checkpoint)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Folder for the folds' runs (fold<k>/) and the table.",
                      required=True)
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tgs.py.",
                                  lock_config=True)
  flags.DEFINE_integer("num_folds", 5, "K: how many folds.")
  flags.DEFINE_string("folds", "", "Comma-separated folds to train now (default all).")
  flags.DEFINE_enum("tta", "none", ["none", "flip"], "Score the folds with flip TTA too.")
  flags.DEFINE_bool("threshold_search", False, "Binary tasks: choose the threshold (and minimum "
                    "area) with the best mean over folds.")
  flags.DEFINE_string("min_areas", "0", "With --threshold_search: minimum predicted areas in "
                      "pixels to try, e.g. 0,10,20,40,80 (smaller masks emptied).")
  flags.DEFINE_string("threshold_metric", "", "Metric the search maximises (tgs_map, dice, iou, "
                      "pixel_accuracy; default config.best_metric).")
  flags.DEFINE_string("checkpoint", "best", "Each fold's weights: "
                      f"{inference.CHECKPOINT_CHOICES}.")
  cli.run(main)
