"""Random augmentations applied identically to an image and its mask (host side, numpy)."""

import numpy as np


def random_flip(element: dict, rng: np.random.Generator, horizontal: bool = True) -> dict:
  """Mirrors image and mask left-right with probability 1/2."""
  if horizontal and rng.random() < 0.5:
    element = dict(element, image=element["image"][:, ::-1], mask=element["mask"][:, ::-1])
  return element


def make_augment(augment_config):
  """Returns the `(element, rng) -> element` transform the config asks for, or None."""
  if not augment_config.hflip:
    return None

  def augment(element, rng):
    return random_flip(element, rng, horizontal=augment_config.hflip)

  return augment
