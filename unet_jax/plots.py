"""matplotlib figures: training curves and image / truth / prediction grids."""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position


def read_metrics(path) -> list[dict]:
  """The records of a metrics.jsonl file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path, out_path) -> None:
  """Loss curves (train and val) beside the validation scores, against the step."""
  records = read_metrics(metrics_path)
  train = [r for r in records if r.get("split") == "train"]
  val = [r for r in records if r.get("split") == "val"]
  fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
  if train:
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  if val:
    ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    for name in ("dice", "iou", "pixel_accuracy", "tgs_map"):
      if name in val[0]:
        ax_score.plot([r["step"] for r in val], [r[name] for r in val], "o-", label=f"val {name}")
  ax_loss.set(xlabel="step", ylabel="loss", title="Loss", yscale="log")
  ax_score.set(xlabel="step", ylabel="score", title="Validation", ylim=(0, 1.02))
  for ax in (ax_loss, ax_score):
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.tight_layout()
  _save(fig, out_path)


def _label_image(labels, num_classes: int):
  if num_classes <= 2:
    return labels, {"cmap": "gray", "vmin": 0, "vmax": 1}
  return labels, {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}


def _overlay(ax, image, truth, predicted, style, num_classes: int) -> None:
  """The prediction as a translucent fill (red if binary), the truth's outline in lime."""
  ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
  if num_classes <= 2:
    style = {"cmap": matplotlib.colors.ListedColormap(["red"]), "vmin": 0, "vmax": 1}
  ax.imshow(np.ma.masked_equal(predicted, 0), alpha=0.45, **style)
  if (truth > 0).any() and not (truth > 0).all():
    ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=1)


def plot_predictions(images, masks, predictions, out_path, num_classes: int,
                     overlay: bool = False, max_rows: int = 6) -> None:
  """One row per example: image, ground truth, prediction (or the prediction overlaid)."""
  rows = min(len(images), max_rows)
  columns = 2 if overlay else 3
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
  for row in range(rows):
    image = np.asarray(images[row])
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    truth, style = _label_image(np.asarray(masks[row]), num_classes)
    predicted, _ = _label_image(np.asarray(predictions[row]), num_classes)
    axes[row, 0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    if overlay:
      _overlay(axes[row, 1], image, truth, predicted, style, num_classes)
    else:
      axes[row, 1].imshow(truth, **style)
      axes[row, 2].imshow(predicted, **style)
  titles = (["image", "prediction, truth outlined"] if overlay
            else ["image", "truth", "prediction"])
  for col, title in enumerate(titles):
    axes[0, col].set_title(title)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  _save(fig, out_path)


def plot_threshold_search(rows: list[dict], metric_names, out_path) -> None:
  """Validation scores against the sigmoid threshold, the best of each marked."""
  fig, ax = plt.subplots(figsize=(6, 4))
  thresholds = [row["threshold"] for row in rows]
  for name in metric_names:
    values = [row[name] for row in rows]
    line, = ax.plot(thresholds, values, ".-", label=name)
    best = int(np.argmax(values))
    ax.plot(thresholds[best], values[best], "o", color=line.get_color())
  ax.set(xlabel="threshold", ylabel="score", title="Threshold search", ylim=(0, 1.02))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  _save(fig, out_path)


def plot_cv_candidates(names, means, stds, per_fold, ylabel: str, out_path) -> None:
  """Cross-validated candidates: mean +- std bars with each fold's score as a dot."""
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
  positions = np.arange(len(names))
  ax.bar(positions, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.6)
  for x, scores in zip(positions, per_fold):
    ax.plot([x] * len(scores), scores, "k.", alpha=0.7)
  low = min(min(s) for s in per_fold)
  ax.set(xticks=positions, ylabel=ylabel, ylim=(max(0.0, low - 0.05), min(1.0, max(
      m + s for m, s in zip(means, stds)) + 0.03)), title="Cross-validation (dots: folds)")
  ax.set_xticklabels(names, rotation=20, ha="right")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  _save(fig, out_path)


def _save(fig, out_path) -> None:
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  tmp.replace(out_path)  # Never leave a half-written PNG where a good one was.
