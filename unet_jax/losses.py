"""Segmentation losses: jnp (the Lovasz sort on the native CPU kernel where it runs),
jit-friendly, weighted per pixel.

Every loss takes float32 `logits` (N, H, W, C), integer `labels` (N, H, W) and per-pixel
`weights` (N, H, W) that are 0 where a pixel must not count (ignore index, padding rows) and
may be > 1 where it should count more (the 2015 paper's boundary weight map). C == 1 means a
binary task with a sigmoid; C > 1 a softmax over classes.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from unet_jax import metrics
from unet_jax.errors import ConfigError
from unet_jax.ops import lovasz as lovasz_ops

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


def image_bce(image_logits, labels, weights):
  """BCE of image-level logits (N, 1) against "any counted foreground pixel" (the empty-mask
  head's auxiliary loss); images with no counted pixel (padding examples) are left out."""
  targets = metrics.has_foreground(labels, weights).astype(jnp.float32)
  image_weights = jnp.any(weights > 0, axis=tuple(range(1, labels.ndim))).astype(jnp.float32)
  return _weighted_mean(optax.sigmoid_binary_cross_entropy(image_logits[:, 0], targets),
                        image_weights)


def focal(logits, labels, weights, gamma: float = 2.0):
  """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)**gamma."""
  if logits.shape[-1] == 1:
    targets = (labels > 0).astype(jnp.float32)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits[..., 0], targets)
  else:
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(
        logits, _safe_labels(labels, logits.shape[-1]))
  return _weighted_mean((-jnp.expm1(-per_pixel)) ** gamma * per_pixel, weights)  # (1-p)^g


def lovasz_grad(sorted_targets):
  """Gradient of the Lovasz extension of the Jaccard loss for targets sorted by error."""
  total = jnp.sum(sorted_targets)
  intersection = total - jnp.cumsum(sorted_targets)
  union = total + jnp.cumsum(1.0 - sorted_targets)
  jaccard = 1.0 - intersection / union
  return jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _sorted_by_error(errors, targets, counted):
  """Sorts by decreasing error; pixels that do not count go last, so they change nothing."""
  keys = jnp.where(counted, errors, -jnp.inf)
  _, errors, targets, counted = jax.lax.sort(
      (-keys, errors, targets, counted.astype(jnp.float32)), num_keys=1)
  return errors * counted, targets * counted


def _lovasz_flat(errors, targets, counted):
  errors, targets = _sorted_by_error(errors, targets, counted)
  return jnp.dot(errors, jax.lax.stop_gradient(lovasz_grad(targets)))


def lovasz_rows(errors, targets, counted, native: bool | None = None):
  """Per row of (rows, n): the Lovasz extension of the counted pixels' errors (Berman et al.
  2018, Alg. 1: errors in decreasing order against lovasz_grad of the targets so sorted).

  native: sort on the native CPU kernel (default: where it can run, see unet_jax.ops.lovasz)
  and differentiate errors * weights elementwise; False: XLA's sort, differentiated through.
  """
  if native is None:
    native = lovasz_ops.available()
  if not native:
    return jax.vmap(_lovasz_flat)(errors, targets, counted)
  counted = counted.astype(jnp.float32)
  weights = lovasz_ops.pixel_weights(jnp.where(counted > 0, errors, -jnp.inf),
                                     targets * counted)
  return jnp.sum(errors * counted * weights, axis=-1)


def lovasz_hinge(logits, labels, weights, per_image: bool = True, native: bool | None = None,
                 smooth: bool = False):
  """Binary Lovasz hinge (Berman et al. 2018) on the logits, per image then averaged.

  Weights act as a mask only (> 0 counts): the Lovasz extension has no per-pixel weights.
  smooth: elu(margin) + 1 in place of relu(margin), the TGS discussion's variant (every pixel
  keeps a gradient; the order, hence the Lovasz weights, is the same).
  """
  targets = (labels > 0).astype(jnp.float32)
  counted = weights > 0
  n = logits.shape[0] if per_image else 1
  margins = 1.0 - logits[..., 0] * (2.0 * targets - 1.0)
  errors = jax.nn.elu(margins) + 1.0 if smooth else jax.nn.relu(margins)
  per = lovasz_rows(errors.reshape(n, -1), targets.reshape(n, -1), counted.reshape(n, -1),
                    native)
  if not per_image:
    return per[0]
  has_pixels = jnp.any(counted.reshape(n, -1), axis=1)
  return jnp.sum(per * has_pixels) / jnp.maximum(jnp.sum(has_pixels), 1)


def lovasz_hinge_symmetric(logits, labels, weights, native: bool | None = None):
  """The Lovasz hinge of the salt and of the background, averaged (the TGS Kaggle solutions'
  symmetric Lovasz): an image without salt gets the IoU of its background as its loss. As
  configs/tgs.py's second stage -0.003 +- 0.003 TGS in 3-fold CV (tgs_recipe.md)."""
  targets = (labels > 0).astype(jnp.float32)
  return 0.5 * (lovasz_hinge(logits, targets, weights, native=native)
                + lovasz_hinge(-logits, 1.0 - targets, weights, native=native))


def bce_lovasz_elu(logits, labels, weights, native: bool | None = None):
  """BCE + the smooth Lovasz hinge: a second stage that keeps the pixel-wise BCE beside the
  IoU surrogate (several TGS solutions trained their last stage on the sum)."""
  return (sigmoid_bce(logits, labels, weights)
          + lovasz_hinge(logits, labels, weights, native=native, smooth=True))


def lovasz_softmax(logits, labels, weights, native: bool | None = None):
  """Lovasz-softmax (Berman et al. 2018) over the batch, mean over classes present.

  One channel is treated as the two classes (background, foreground) of a sigmoid.
  """
  probs, targets = _probabilities_and_targets(logits, labels)
  if logits.shape[-1] == 1:
    probs = jnp.concatenate([1.0 - probs, probs], axis=-1)
    targets = jnp.concatenate([1.0 - targets, targets], axis=-1)
  num_classes = probs.shape[-1]
  probs, targets = probs.reshape(-1, num_classes), targets.reshape(-1, num_classes)
  counted = weights.ravel() > 0
  per_class = lovasz_rows(jnp.abs(targets - probs).T, targets.T,
                          jnp.broadcast_to(counted, (num_classes, counted.size)), native)
  present = jnp.sum(targets * counted[:, None], axis=0) > 0
  return jnp.sum(per_class * present) / jnp.maximum(jnp.sum(present), 1)


LOSSES: dict[str, LossFn] = {
    "bce": sigmoid_bce,
    "softmax_ce": softmax_cross_entropy,
    "dice": soft_dice,
    "bce_dice": bce_dice,
    "focal": focal,
    "lovasz_hinge": lovasz_hinge,
    "lovasz_hinge_symmetric": lovasz_hinge_symmetric,
    "lovasz_hinge_elu": functools.partial(lovasz_hinge, smooth=True),
    "bce_lovasz_elu": bce_lovasz_elu,
    "lovasz_softmax": lovasz_softmax,
}


def get_loss(name: str) -> LossFn:
  """The loss registered under `name`, with a one-line error listing the choices."""
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
  return LOSSES[name]


def boundary_weight_map(mask, w0: float = 10.0, sigma: float = 5.0, ignore_index=None):
  """The 2015 U-Net paper's weight map (eq. 2), float32 (H, W), computed on the host.

  w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2)) on background pixels, where
  d1, d2 are the distances to the nearest and second-nearest object (connected component of
  the foreground) and w_c balances class frequencies (weights of a class sum to
  pixels / classes present). Ignored pixels get weight 0.
  """
  mask = np.asarray(mask)
  counted = np.ones(mask.shape, bool) if ignore_index is None else mask != ignore_index
  classes, counts = np.unique(mask[counted], return_counts=True)
  weights = np.zeros(mask.shape, np.float64)
  for value, count in zip(classes, counts):
    weights[(mask == value) & counted] = counted.sum() / (len(classes) * count)
  objects, num_objects = ndimage.label((mask > 0) & counted)
  if num_objects >= 2:
    distances = np.stack([ndimage.distance_transform_edt(objects != k)
                          for k in range(1, num_objects + 1)])
    nearest_two = np.partition(distances, 1, axis=0)[:2]
    border = w0 * np.exp(-(nearest_two[0] + nearest_two[1]) ** 2 / (2.0 * sigma**2))
    weights += border * ((objects == 0) & counted)
  return (weights * counted).astype(np.float32)


class BoundaryWeights:
  """Per-element transform adding `weight`: boundary_weight_map of the element's mask."""

  def __init__(self, w0: float = 10.0, sigma: float = 5.0, ignore_index=None):
    self.w0, self.sigma, self.ignore_index = w0, sigma, ignore_index

  def __call__(self, element: dict) -> dict:
    weight = boundary_weight_map(element["mask"], self.w0, self.sigma, self.ignore_index)
    return {**element, "weight": weight}


def weight_map_transform(config):
  """BoundaryWeights for `config` if config.weight_map is on, else None."""
  if not config.get("weight_map", False):
    return None
  ignore_index = config.ignore_index if config.ignore_index >= 0 else None
  return BoundaryWeights(config.weight_map_w0, config.weight_map_sigma, ignore_index)
