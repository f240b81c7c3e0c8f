"""Evaluates a run's best checkpoint on a split: metrics table (JSON + markdown) and plots.

  python -m unet_jax.evaluate --workdir runs/tgs [--split val] [--threshold_search] [--tta flip]
      [--min_areas 0,10,20,40,80,160]
  python -m unet_jax.evaluate --workdir runs/cv/fold0 --workdir runs/cv/fold1 ...  # An ensemble.

Writes workdir/eval/<split>_metrics.{json,md} and <split>_predictions.png (<split>_tta_...
with flip TTA, <split>_ensemble_... for several runs, in the first run's eval/). The optional
threshold search (binary tasks) scores 19 sigmoid thresholds 0.05..0.95 in one pass, with
`--min_areas` also each minimum predicted area (a mask with fewer pixels is emptied, as
`predict --min_area` does); it is tuned on the split it reports, so report it on a split you did
not tune on (or choose with `cross_validate --threshold_search`, which averages over folds).
"""

import functools
import json
import logging
import pathlib

import jax
import numpy as np
from absl import flags

from unet_jax import cli, data, inference, losses, metrics, parallel, plots, steps, train
from unet_jax.data import pipeline
from unet_jax.data.window import CentreWindow, native_window
from unet_jax.errors import ConfigError

SWEEP_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
SWEEP_METRICS = ("tgs_map", "dice", "iou", "pixel_accuracy")


def _parse_window(crop: str, source, config) -> tuple[int, int] | None:
  if crop == "auto":
    return native_window(source, config)
  if crop == "none":
    return None
  try:
    height, width = (int(v) for v in crop.lower().split("x"))
  except ValueError:
    raise ConfigError(f"--crop={crop!r} is not auto, none or HEIGHTxWIDTH like 101x101; "
                      "fix the flag") from None
  if height > config.image_size[0] or width > config.image_size[1]:
    raise ConfigError(f"--crop={crop} is larger than image_size {tuple(config.image_size)}; "
                      "pass a smaller window")
  return height, width


def _sweep_step(state, batch, *, thresholds, min_areas, ignore_index, flip):
  valid = batch.get("valid")
  weights = losses.pixel_weights(batch["mask"], ignore_index, valid)
  if "weight" in batch:
    weights = weights * batch["weight"]
  foreground = inference.probabilities(state, batch["image"], flip)[..., 0]
  return metrics.threshold_sweep_sums(foreground, batch["mask"], weights, thresholds, valid,
                                      min_areas)


def threshold_search(model: inference.TrainedModel, source, thresholds=SWEEP_THRESHOLDS,
                     tta: str = "none", min_areas=(0,)) -> list[dict]:
  """Scores at each sigmoid threshold and minimum area over the whole split (binary tasks)."""
  config = model.config
  ignore_index = config.ignore_index if config.ignore_index >= 0 else None
  sweep = jax.jit(functools.partial(_sweep_step, thresholds=tuple(thresholds),
                                    min_areas=tuple(min_areas),
                                    ignore_index=ignore_index, flip=tta == "flip"))
  totals = None
  for batch in pipeline.eval_batches(source, global_batch_size=config.eval_batch_size,
                                     shard=parallel.process_shard()):
    sums = sweep(model.state, parallel.shard_batch(batch, model.mesh))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  rows = []
  for i, threshold in enumerate(thresholds):
    for j, min_area in enumerate(min_areas):
      scores = metrics.scores_from_sums({k: v[i, j] for k, v in totals.items()})
      rows.append({"threshold": threshold, "min_area": int(min_area),
                   **{k: scores[k] for k in SWEEP_METRICS}})
  return rows


def parse_min_areas(text: str) -> tuple[int, ...]:
  """'0,10,20' -> (0, 10, 20); one clear error otherwise."""
  try:
    areas = tuple(sorted({int(a) for a in str(text).split(",") if a.strip()}))
  except ValueError:
    areas = ()
  if not areas or areas[0] < 0:
    raise ConfigError(f"--min_areas={text!r} is not a comma-separated list of pixel counts >= 0 "
                      "like 0,10,20,40")
  return areas


def rows_at_min_area(rows: list[dict], min_area: int) -> list[dict]:
  return [row for row in rows if row.get("min_area", 0) == min_area]


def _prediction_grid(model, source, path, overlay: bool, tta: str = "none",
                     threshold: float = 0.5) -> None:
  count = min(len(source), 6)
  examples = [source[i] for i in range(count)]
  images = np.stack([np.asarray(e["image"]) for e in examples])
  probabilities = np.asarray(jax.device_get(inference.make_predict_fn(tta)(model.state, images)))
  if model.is_binary:
    predicted = (probabilities[..., 0] > threshold).astype(np.int32)
  else:
    predicted = probabilities.argmax(-1)
  plots.plot_predictions(images, [e["mask"] for e in examples], predicted, path,
                         num_classes=max(model.config.num_classes, 2), overlay=overlay)


def markdown_table(report: dict) -> str:
  """The report as markdown: the scores, then the threshold search if any."""
  window = report.get("scored_window")
  scored = f", scored on the centred {window[0]}x{window[1]}" if window else ""
  members = report.get("members")
  what = (f"ensemble of {len(members)} runs (steps {', '.join(str(m['step']) for m in members)})"
          if members else f"step {report['step']}")
  tta = ", flip TTA" if report.get("tta") == "flip" else ""
  lines = [f"# {report['workdir']}: split {report['split']}, {what}{tta}, "
           f"{report['examples']} examples{scored}", "", "| metric | value |", "|---|---|"]
  lines += [f"| {name} | {value:.4f} |" for name, value in report["scores"].items()]
  search = report.get("threshold_search")
  if search:
    lines += [""] + search_tables(search)
  return "\n".join(lines) + "\n"


def search_tables(search: dict) -> list[str]:
  """Markdown lines: the thresholds at the best minimum area, then the best per area."""
  best, metric = search["best"], search["metric"]
  areas = sorted({row.get("min_area", 0) for row in search["rows"]})
  at_area = f", minimum area {best.get('min_area', 0)} px" if len(areas) > 1 else ""
  lines = [f"## Threshold search: best {metric} {best[metric]:.4f} at threshold "
           f"{best['threshold']:.2f}{at_area}", "",
           "| threshold | " + " | ".join(SWEEP_METRICS) + " |",
           "|---" * (len(SWEEP_METRICS) + 1) + "|"]
  lines += [f"| {row['threshold']:.2f} | " + " | ".join(f"{row[k]:.4f}" for k in SWEEP_METRICS)
            + " |" for row in rows_at_min_area(search["rows"], best.get("min_area", 0))]
  if len(areas) > 1:
    lines += ["", f"## Best {metric} for each minimum predicted area", "",
              f"| min area (px) | threshold | {metric} |", "|---|---|---|"]
    for area in areas:
      top = max(rows_at_min_area(search["rows"], area), key=lambda row: row[metric])
      lines.append(f"| {area} | {top['threshold']:.2f} | {top[metric]:.4f} |")
  return lines


def _eval_step(model: inference.TrainedModel, tta: str):
  """The run's jitted eval step, or one scoring the flip-TTA / ensemble average."""
  config = model.config
  if tta == "none" and not model.members:
    return steps.jit_steps(config)[1]
  if tta not in ("none", "flip"):
    raise ConfigError(f"--tta={tta!r}; use none or flip")
  return jax.jit(functools.partial(
      steps.eval_step, loss_fn=losses.get_loss(config.loss),
      ignore_index=config.ignore_index if config.ignore_index >= 0 else None,
      num_classes=config.num_classes,
      logits_fn=functools.partial(inference.averaged_logits, flip=tta == "flip")))


def evaluate_run(workdir, split: str = "val", search: bool = False, overlay: bool = False,
                 output_dir=None, crop: str = "auto", threshold_metric: str = "",
                 tta: str = "none", min_areas=(0,), checkpoint: str = "best") -> dict:
  """Scores the best checkpoint of `workdir` (or the average of several runs') on `split`;
  writes JSON, markdown and a grid.

  crop: 'auto' scores only the original pixels of images that training padded (TGS), 'none'
  the whole image_size, 'HxW' the centred window. tta 'flip' averages the mirrored pass.
  min_areas: the search also scores these minimum predicted areas (pixels of the scored window).
  checkpoint: best, latest, a step, or average:N (the mean weights of the last N checkpoints).
  """
  model = inference.load_ensemble(workdir, checkpoint)
  config = model.config
  if tuple(min_areas) != (0,) and not search:
    raise ConfigError(f"--min_areas={','.join(map(str, min_areas))} is scored by the threshold "
                      "search; add --threshold_search")
  if search and not model.is_binary:
    raise ConfigError(f"--threshold_search needs a binary task, this run has "
                      f"{config.num_classes} classes; leave the flag out")
  source = data.load_split(config, split)
  window = _parse_window(crop, source, config)
  scored = CentreWindow(source, window) if window else source
  scores = train.evaluate(model.state, _eval_step(model, tta), scored, config, model.mesh)
  first = workdir if isinstance(workdir, (str, pathlib.Path)) else workdir[0]
  report = {"workdir": str(pathlib.Path(first).expanduser().absolute()), "split": split,
            "step": model.step, "checkpoint": checkpoint,
            "averaged_steps": list(model.averaged_steps), "examples": len(source),
            "scored_window": window, "tta": tta,
            "members": [{"workdir": w, "step": step, "averaged_steps": list(averaged)}
                        for w, step, averaged in model.members],
            "scores": scores}
  if search:
    rows = threshold_search(model, scored, tta=tta, min_areas=min_areas)
    metric = threshold_metric or (config.best_metric if config.best_metric in SWEEP_METRICS
                                  else "dice")
    if metric not in SWEEP_METRICS:
      raise ConfigError(f"--threshold_metric={metric!r}; choose one of {', '.join(SWEEP_METRICS)}")
    report["threshold_search"] = {"metric": metric, "rows": rows,
                                  "best": max(rows, key=lambda row: row[metric])}
  output_dir = pathlib.Path(output_dir or pathlib.Path(report["workdir"]) / "eval")
  output_dir.mkdir(parents=True, exist_ok=True)
  # Each kind of score keeps its own files: a TTA or ensemble report never replaces the run's.
  name = (split + ("_tta" if tta == "flip" else "") + ("_ensemble" if model.members else "")
          + inference.checkpoint_label(checkpoint))
  (output_dir / f"{name}_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
  (output_dir / f"{name}_metrics.md").write_text(markdown_table(report))
  _prediction_grid(model, source, output_dir / f"{name}_predictions.png", overlay, tta)
  if search:
    best_area = report["threshold_search"]["best"]["min_area"]
    plots.plot_threshold_search(rows_at_min_area(rows, best_area), SWEEP_METRICS,
                                output_dir / f"{name}_thresholds.png")
  logging.info("wrote %s_metrics.json, .md and plots to %s", name, output_dir)
  return report


def define_flags() -> None:
  flags.DEFINE_multi_string("workdir", None, "Training run to evaluate (best checkpoint); "
                            "repeat it to score the average of several runs (e.g. folds).",
                            required=True)
  flags.DEFINE_string("split", "val", "Split of the run's dataset: val or train.")
  flags.DEFINE_bool("threshold_search", False, "Binary tasks: also score thresholds 0.05..0.95.")
  flags.DEFINE_bool("overlay", False, "Predictions grid: overlay the prediction on the image.")
  flags.DEFINE_string("output", None, "Folder for the results (default workdir/eval).")
  flags.DEFINE_string("crop", "auto", "Score only the centred HxW window: auto = the original "
                      "size of images training padded (TGS 101x101 in 128x128), none, or HxW.")
  flags.DEFINE_string("threshold_metric", "", "Metric the threshold search maximises "
                      "(tgs_map, dice, iou, pixel_accuracy; default config.best_metric).")
  flags.DEFINE_enum("tta", "none", ["none", "flip"], "flip: average with the mirrored pass.")
  flags.DEFINE_string("checkpoint", "best", f"Which weights: {inference.CHECKPOINT_CHOICES}.")
  flags.DEFINE_string("min_areas", "0", "With --threshold_search: also score these minimum "
                      "predicted areas in pixels, e.g. 0,10,20,40,80 (smaller masks emptied).")


def main(argv):
  cli.reject_extra_args(argv)
  f = flags.FLAGS
  with cli.exit_on_user_error():
    report = evaluate_run(f.workdir, f.split, f.threshold_search, f.overlay, f.output,
                          f.crop, f.threshold_metric, f.tta, parse_min_areas(f.min_areas),
                          f.checkpoint)
  print(markdown_table(report), end="")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
