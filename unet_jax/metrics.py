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
