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
  # Fixed margins: tight_layout measured every tick label, half of each evaluation's plotting.
  fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.2)
  _save(fig, out_path)


GAP = 2  # White pixels between the cells of a prediction grid.
PREDICTION_RED = np.array([1.0, 0.0, 0.0])
OUTLINE_LIME = np.array([0.0, 1.0, 0.0])


def _image_rgb(image) -> np.ndarray:
  """An HxW or HxWxC image as float RGB in [0, 1], its own range stretched (as imshow does)."""
  image = np.asarray(image, np.float32)
  image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
  low, high = float(image.min()), float(image.max())
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _labels_rgb(labels, num_classes: int) -> np.ndarray:
  """Binary masks white on black; class maps in tab20's colours (class k: colour k mod 20)."""
  labels = np.asarray(labels).astype(np.int64)
  if num_classes <= 2:
    return np.repeat((labels > 0).astype(np.float32)[..., None], 3, axis=-1)
  return matplotlib.colormaps["tab20"](labels % 20)[..., :3].astype(np.float32)


def _outline(mask) -> np.ndarray:
  """The pixels of `mask` with a 4-neighbour outside it (the edge of each region)."""
  padded = np.pad(mask, 1, mode="edge")
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def _overlay_rgb(image, truth, predicted, num_classes: int) -> np.ndarray:
  """The prediction as a translucent fill (red if binary), the truth's outline in lime."""
  rgb = _image_rgb(image)
  fill = (np.broadcast_to(PREDICTION_RED, rgb.shape) if num_classes <= 2
          else _labels_rgb(predicted, num_classes))
  chosen = (np.asarray(predicted) > 0)[..., None]
  rgb = np.where(chosen, 0.55 * rgb + 0.45 * fill, rgb)
  truth = np.asarray(truth) > 0
  if truth.any() and not truth.all():
    rgb[_outline(truth)] = OUTLINE_LIME
  return rgb


def prediction_mosaic(images, masks, predictions, num_classes: int, overlay: bool = False,
                      max_rows: int = 6) -> np.ndarray:
  """RGB float rows of image | truth | prediction (or image | prediction over the truth's
  outline), GAP white pixels apart: one array, drawn at once."""
  rows = []
  for image, truth, predicted in list(zip(images, masks, predictions))[:max_rows]:
    if overlay:
      cells = [_image_rgb(image), _overlay_rgb(image, truth, predicted, num_classes)]
    else:
      cells = [_image_rgb(image), _labels_rgb(truth, num_classes),
               _labels_rgb(predicted, num_classes)]
    rows.append(_join(cells, axis=1))
  return _join(rows, axis=0)


def _join(parts, axis: int) -> np.ndarray:
  """`parts` concatenated along `axis` with GAP white pixels between neighbours."""
  shape = list(parts[0].shape)
  shape[axis] = GAP
  gap = np.ones(shape, np.float32)
  return np.concatenate([piece for part in parts for piece in (part, gap)][:-1], axis=axis)


def plot_predictions(images, masks, predictions, out_path, num_classes: int,
                     overlay: bool = False, max_rows: int = 6) -> None:
  """One row per example: image, ground truth, prediction (or the prediction overlaid).
  One image on one axes: 18 axes each laid out took ~1 s a grid, at every evaluation."""
  mosaic = prediction_mosaic(images, masks, predictions, num_classes, overlay, max_rows)
  rows = min(len(images), max_rows)
  titles = (["image", "prediction, truth outlined"] if overlay
            else ["image", "truth", "prediction"])
  fig = plt.figure(figsize=(3 * len(titles), 3 * rows + 0.4))
  ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.5 / (3 * rows + 0.4)))
  ax.imshow(np.clip(mosaic, 0, 1), interpolation="nearest")
  cell_width = (mosaic.shape[1] + GAP) / len(titles)
  for col, title in enumerate(titles):
    ax.text((col + 0.5) * cell_width - GAP / 2, -GAP, title, ha="center", va="bottom",
            fontsize=12)
  ax.axis("off")
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
