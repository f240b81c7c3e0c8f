"""Segmentation metrics, accumulated over a whole split through a confusion matrix.

A per-batch confusion matrix is summed on the device; scores are computed once at the end,
so Dice/IoU are those of the split, not means of per-batch values.
"""

import jax
import jax.numpy as jnp
import numpy as np


def predicted_labels(logits, threshold: float = 0.5):
  """Class indices (N, H, W): sigmoid > threshold for one channel, argmax otherwise."""
  if logits.shape[-1] == 1:
    return (jax.nn.sigmoid(logits[..., 0]) > threshold).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_matrix(predictions, labels, weights, num_classes: int):
  """(num_classes, num_classes) float32 counts: rows are truth, columns prediction.

  Pixels with weight 0 (ignored, padding) do not count; labels outside [0, num_classes) are
  dropped too.
  """
  labels = labels.astype(jnp.int32)
  counted = (weights > 0) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(counted, labels * num_classes + predictions, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[index.ravel()].add(
      counted.ravel().astype(jnp.float32))
  return counts.reshape(num_classes, num_classes)


def scores_from_confusion(confusion) -> dict[str, float]:
  """Pixel accuracy, Dice, IoU (binary: of the foreground; multi-class: means over classes
  present in truth or prediction) and per-class IoU."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  truth = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  union = truth + predicted - true_positive
  present = union > 0
  iou = np.where(present, true_positive / np.maximum(union, 1), np.nan)
  dice = np.where(present, 2 * true_positive / np.maximum(truth + predicted, 1), np.nan)
  scores = {"pixel_accuracy": float(true_positive.sum() / max(confusion.sum(), 1))}
  if confusion.shape[0] == 2:
    # An empty truth predicted empty is a perfect score.
    scores["dice"] = float(dice[1]) if present[1] else 1.0
    scores["iou"] = float(iou[1]) if present[1] else 1.0
  else:
    scores["dice"] = float(np.nanmean(dice)) if present.any() else 1.0
    scores["iou"] = float(np.nanmean(iou)) if present.any() else 1.0
    scores["miou"] = scores["iou"]
    scores.update({f"iou_class_{c}": float(v) for c, v in enumerate(iou) if present[c]})
  return scores


# The TGS Salt metric: IoU thresholds 0.50, 0.55, ..., 0.95 as (10 + k) / 20, compared exactly
# in integers: IoU > t  <=>  20 * intersection > (10 + k) * union.
TGS_THRESHOLD_NUMERATORS = tuple(range(10, 20))


def tgs_image_precision(predictions, labels, weights):
  """Per-image TGS score (N,): the precision averaged over IoU thresholds 0.50:0.05:0.95.

  An image holds at most one object, so the precision at t is 1 if IoU > t else 0; an empty
  truth scores 1 if the prediction is empty too and 0 otherwise (the competition's rule).
  Pixels with weight 0 do not count.
  """
  counted = weights > 0
  predicted = (predictions > 0) & counted
  truth = (labels > 0) & counted
  axes = tuple(range(1, labels.ndim))
  intersection = jnp.sum(predicted & truth, axis=axes, dtype=jnp.int32)
  union = jnp.sum(predicted | truth, axis=axes, dtype=jnp.int32)
  numerators = jnp.asarray(TGS_THRESHOLD_NUMERATORS, jnp.int32)
  hits = 20 * intersection[:, None] > numerators[None, :] * union[:, None]
  return jnp.where(union == 0, 1.0, jnp.mean(hits.astype(jnp.float32), axis=1))


def has_foreground(labels, weights):
  """(N,) bool: the image has at least one counted (weight > 0) foreground pixel."""
  return jnp.any((labels > 0) & (weights > 0), axis=tuple(range(1, labels.ndim)))


def tgs_sums(predictions, labels, weights, example_valid=None) -> dict:
  """Sum of per-image TGS scores and the image count, to be summed over a split."""
  per_image = tgs_image_precision(predictions, labels, weights)
  valid = jnp.ones_like(per_image) if example_valid is None else example_valid
  empty = valid * ~has_foreground(labels, weights)
  return {"tgs_precision_sum": jnp.sum(per_image * valid), "image_count": jnp.sum(valid),
          "tgs_empty_precision_sum": jnp.sum(per_image * empty), "empty_count": jnp.sum(empty)}


def drop_small_masks(predictions, weights, min_area: int):
  """Binary predictions (N, H, W) with each image of fewer than `min_area` counted foreground
  pixels emptied: on TGS a speck predicted on an empty image scores 0 instead of 1."""
  axes = tuple(range(1, predictions.ndim))
  area = jnp.sum((predictions > 0) & (weights > 0), axis=axes)
  keep = (area >= min_area).reshape((-1,) + (1,) * len(axes))
  return predictions * keep.astype(predictions.dtype)


def threshold_sweep_sums(foreground_probabilities, labels, weights, thresholds,
                         example_valid=None, min_areas=(0,)) -> dict:
  """Binary confusion matrices (T, A, 2, 2) and TGS sums (T, A) for each threshold and each
  minimum predicted area (see drop_small_masks)."""

  def at(threshold):
    thresholded = (foreground_probabilities > threshold).astype(jnp.int32)
    per_area = []
    for min_area in min_areas:
      predictions = drop_small_masks(thresholded, weights, min_area) if min_area else thresholded
      sums = tgs_sums(predictions, labels, weights, example_valid)
      sums["confusion"] = confusion_matrix(predictions, labels, weights, 2)
      per_area.append(sums)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_area)

  return jax.lax.map(at, jnp.asarray(thresholds, jnp.float32))


def scores_from_sums(totals) -> dict[str, float]:
  """Scores of a split from its summed eval sums (confusion, loss, TGS metric)."""
  scores = scores_from_confusion(totals["confusion"])
  if "loss_sum" in totals:
    scores["loss"] = float(totals["loss_sum"] / max(float(totals["weight_sum"]), 1e-6))
  if "tgs_precision_sum" in totals:
    scores["tgs_map"] = float(totals["tgs_precision_sum"] / max(float(totals["image_count"]), 1))
  if "empty_count" in totals:  # Where the TGS score goes: images without and with foreground.
    empty, total = float(totals["empty_count"]), float(totals["image_count"])
    empty_sum = float(totals["tgs_empty_precision_sum"])
    if empty:
      scores["tgs_map_empty"] = empty_sum / empty
    if total - empty:
      scores["tgs_map_salt"] = (float(totals["tgs_precision_sum"]) - empty_sum) / (total - empty)
  return scores
