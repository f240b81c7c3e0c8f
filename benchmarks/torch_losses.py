"""torch twins of unet_jax.losses for binary (one-channel) tasks: bce, dice, bce_dice,
lovasz_hinge (per image, Berman et al.'s reference code) and lovasz_hinge_elu (elu + 1).

Same maths as the JAX losses: logits (N, 1, H, W), integer labels (N, H, W), per-pixel
weights (N, H, W); means are weighted, Dice is over the whole batch with smoothing 1.
"""

import numpy as np
import torch
import torch.nn.functional as F


def pixel_weights(labels, ignore_index=None, extra=None):
  """losses.pixel_weights (times a batch's `weight` if it has one) as a float tensor."""
  weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
  if ignore_index is not None and ignore_index >= 0:
    weights = weights * (labels != ignore_index)
  if extra is not None:
    weights = weights * torch.from_numpy(np.asarray(extra, np.float32)).to(labels.device)
  return weights


def _weighted_mean(per_pixel, weights):
  return torch.sum(per_pixel * weights) / torch.clamp(torch.sum(weights), min=1e-6)


def _binary(logits, labels):
  if logits.shape[1] != 1:
    raise ValueError("the torch losses here are binary: one output channel")
  return logits[:, 0], (labels > 0).float()


def sigmoid_bce(logits, labels, weights):
  logits, targets = _binary(logits, labels)
  per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
  return _weighted_mean(per_pixel, weights)


def soft_dice(logits, labels, weights, smooth: float = 1.0):
  logits, targets = _binary(logits, labels)
  probs = torch.sigmoid(logits)
  intersection = torch.sum(probs * targets * weights)
  total = torch.sum((probs + targets) * weights)
  return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def bce_dice(logits, labels, weights):
  return sigmoid_bce(logits, labels, weights) + soft_dice(logits, labels, weights)


def _lovasz_grad(sorted_targets):
  total = sorted_targets.sum()
  intersection = total - sorted_targets.cumsum(0)
  union = total + (1.0 - sorted_targets).cumsum(0)
  jaccard = 1.0 - intersection / union
  return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_hinge(logits, labels, weights, activation=F.relu):
  """Per-image Lovasz hinge averaged over images with counted pixels (weights > 0 count);
  `activation` of the sorted margins (relu; lovasz_hinge_elu: elu + 1)."""
  logits, targets = _binary(logits, labels)
  per_image = []
  for image_logits, image_targets, image_weights in zip(logits, targets, weights):
    counted = image_weights.reshape(-1) > 0
    if not counted.any():
      continue
    flat_targets = image_targets.reshape(-1)[counted]
    errors = 1.0 - image_logits.reshape(-1)[counted] * (2.0 * flat_targets - 1.0)
    errors_sorted, order = torch.sort(errors, descending=True)
    per_image.append(torch.dot(activation(errors_sorted), _lovasz_grad(flat_targets[order])))
  return torch.stack(per_image).mean() if per_image else logits.sum() * 0.0


def lovasz_hinge_elu(logits, labels, weights):
  return lovasz_hinge(logits, labels, weights, activation=lambda e: F.elu(e) + 1.0)


def bce_lovasz_elu(logits, labels, weights):
  return sigmoid_bce(logits, labels, weights) + lovasz_hinge_elu(logits, labels, weights)


LOSSES = {"bce": sigmoid_bce, "dice": soft_dice, "bce_dice": bce_dice,
          "lovasz_hinge": lovasz_hinge, "lovasz_hinge_elu": lovasz_hinge_elu,
          "bce_lovasz_elu": bce_lovasz_elu}


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"loss {name!r} has no torch twin here; choose one of {sorted(LOSSES)}")
  return LOSSES[name]
