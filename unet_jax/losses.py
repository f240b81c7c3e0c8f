"""Segmentation losses: pure jnp, jit-friendly, weighted per pixel.

Every loss takes float32 `logits` (N, H, W, C), integer `labels` (N, H, W) and per-pixel
`weights` (N, H, W) that are 0 where a pixel must not count (ignore index, padding rows) and
may be > 1 where it should count more (the 2015 paper's boundary weight map). C == 1 means a
binary task with a sigmoid; C > 1 a softmax over classes.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from unet_jax.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def pixel_weights(labels, ignore_index: int | None = None, example_valid=None):
  """1 for pixels that count, 0 for `ignore_index` pixels and padding examples."""
  weights = jnp.ones(labels.shape, jnp.float32)
  if ignore_index is not None and ignore_index >= 0:
    weights = jnp.where(labels == ignore_index, 0.0, weights)
  if example_valid is not None:
    weights = weights * example_valid.reshape((-1,) + (1,) * (labels.ndim - 1))
  return weights


def _weighted_mean(per_pixel, weights):
  return jnp.sum(per_pixel * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def _safe_labels(labels, num_classes: int):
  """Replaces out-of-range labels (e.g. void = 11) by 0; their weight is 0 anyway."""
  labels = labels.astype(jnp.int32)
  return jnp.where((labels >= 0) & (labels < num_classes), labels, 0)


def sigmoid_bce(logits, labels, weights):
  """Binary cross-entropy on logits (numerically stable)."""
  targets = (labels > 0).astype(jnp.float32)
  return _weighted_mean(optax.sigmoid_binary_cross_entropy(logits[..., 0], targets), weights)


def softmax_cross_entropy(logits, labels, weights):
  """Pixel-wise softmax cross-entropy with integer labels."""
  labels = _safe_labels(labels, logits.shape[-1])
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _weighted_mean(per_pixel, weights)


def _probabilities_and_targets(logits, labels):
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits), (labels > 0).astype(jnp.float32)[..., None]
  labels = _safe_labels(labels, logits.shape[-1])
  return jax.nn.softmax(logits), jax.nn.one_hot(labels, logits.shape[-1])


def soft_dice(logits, labels, weights, smooth: float = 1.0):
  """1 - Dice over the whole batch with a smoothing term (the Keras Carvana recipe).

  Multi-class: the mean of the per-class soft Dice losses.
  """
  probs, targets = _probabilities_and_targets(logits, labels)
  w = weights[..., None]
  intersection = jnp.sum(probs * targets * w, axis=(0, 1, 2))
  total = jnp.sum((probs + targets) * w, axis=(0, 1, 2))
  return 1.0 - jnp.mean((2.0 * intersection + smooth) / (total + smooth))


def bce_dice(logits, labels, weights):
  """Binary cross-entropy + soft Dice, the usual Kaggle combination."""
  return sigmoid_bce(logits, labels, weights) + soft_dice(logits, labels, weights)


LOSSES: dict[str, LossFn] = {
    "bce": sigmoid_bce,
    "softmax_ce": softmax_cross_entropy,
    "dice": soft_dice,
    "bce_dice": bce_dice,
}


def get_loss(name: str) -> LossFn:
  """The loss registered under `name`, with a one-line error listing the choices."""
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
  return LOSSES[name]
