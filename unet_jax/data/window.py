"""Scoring only the stored pixels of images that training padded to a larger size."""

import numpy as np


class CentreWindow:
  """A source whose elements get `weight` 1 in the centred (h, w) window, 0 outside.

  TGS trains on 101x101 images mirrored into 128x128; scoring only the window scores the
  original pixels, as Kaggle does, instead of the mirrored border.
  """

  def __init__(self, source, window: tuple[int, int]):
    self.source, self.window = source, tuple(window)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> dict:
    element = dict(self.source[index])
    height, width = element["mask"].shape[:2]
    top, left = (height - self.window[0]) // 2, (width - self.window[1]) // 2
    weight = np.zeros((height, width), np.float32)
    weight[top:top + self.window[0], left:left + self.window[1]] = 1.0
    element["weight"] = weight * element.get("weight", 1.0)
    return element


def native_window(source, config) -> tuple[int, int] | None:
  """The stored image size when training padded smaller images into image_size, else None.

  None too when the padding is labelled ignore_index (CamVid, folder): it is never scored
  then, and each image's own pixels are, whatever its size (folders of mixed sizes).
  """
  if (config.get("data_resolution") != "native" or not hasattr(source, "data_source")
      or config.ignore_index >= 0):
    return None
  from unet_jax.data import imaging  # pylint: disable=import-outside-toplevel
  shape = imaging.decode_array(source.data_source[0]["image"]).shape[:2]
  return tuple(shape) if tuple(shape) != tuple(config.image_size) else None
