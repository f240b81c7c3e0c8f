"""One config per published U-Net tutorial; each docstring gives the command, the tutorial's
reported result and ours. The trainer counts steps, so epochs are converted with
`epochs_to_steps`: steps = ceil(epochs * train_images / batch_size) (the training stream runs
epoch after epoch without a partial last batch, so this is exactly `epochs` passes)."""

import math


def epochs_to_steps(epochs: float, train_images: int, batch_size: int) -> int:
  """Optimisation steps that make `epochs` passes over `train_images` at `batch_size`."""
  return max(1, math.ceil(epochs * train_images / batch_size))


def steps_per_epoch(train_images: int, batch_size: int) -> int:
  """Steps in one pass (rounded up): the eval interval of recipes that validate per epoch."""
  return epochs_to_steps(1, train_images, batch_size)
