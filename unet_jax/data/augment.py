"""Random augmentations applied identically to an image and its mask (host side, uint8).

Order: horizontal flip, one affine warp (rotation, zoom, random crop position), then
brightness/contrast on the image only. The flip and the warp are one resampling: images
bilinear, masks nearest neighbour (labels stay labels). The zoom is always large enough that
the rotated window stays inside the image, so no empty border is ever invented. Each
transform draws from the `rng` grain gives every element, so a seed and a step fix the result.
OpenCV does the resampling when installed (5-10x faster than PIL, which is the fallback).
"""

import math

import numpy as np
from PIL import Image

try:
  import cv2  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - PIL fallback.
  cv2 = None


def random_flip(element: dict, rng: np.random.Generator, horizontal: bool = True) -> dict:
  """Mirrors image and mask left-right with probability 1/2."""
  if horizontal and rng.random() < 0.5:
    element = dict(element, image=element["image"][:, ::-1], mask=element["mask"][:, ::-1])
  return element


def covering_zoom(angle: float, height: int, width: int) -> float:
  """The least zoom at which a `height` x `width` window rotated by `angle` fits the image."""
  cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
  return max(cos + sin * height / width, cos + sin * width / height)


def random_affine(rng: np.random.Generator, height: int, width: int, max_degrees: float,
                  max_scale: float, flip: bool = False, pixel_offset: float = 0.0) -> np.ndarray:
  """2x3 map from output to input pixel coordinates: a random rotation, zoom and crop.

  `pixel_offset` is where the library puts pixel centres: 0 (OpenCV) or 0.5 (PIL).
  """
  angle = math.radians(rng.uniform(-max_degrees, max_degrees))
  zoom = covering_zoom(angle, height, width) * (1.0 + rng.uniform(0.0, max_scale))
  cos, sin = math.cos(angle), math.sin(angle)
  # Half the room the rotated window leaves on each axis: the random crop position.
  slack_x = max(0.0, width - (width * abs(cos) + height * abs(sin)) / zoom) / 2
  slack_y = max(0.0, height - (width * abs(sin) + height * abs(cos)) / zoom) / 2
  center_out = np.array([width, height]) / 2 - 0.5 + pixel_offset
  center_in = center_out + [rng.uniform(-slack_x, slack_x), rng.uniform(-slack_y, slack_y)]
  linear = np.array([[cos, -sin], [sin, cos]]) / zoom
  affine = np.hstack([linear, (center_in - linear @ center_out)[:, None]])
  if flip:  # Read the mirrored image: x_in -> (width - 1 + 2 * offset) - x_in.
    affine = np.array([[-1.0, 0.0, width - 1 + 2 * pixel_offset], [0.0, 1.0, 0.0]]) @ np.vstack(
        [affine, [0.0, 0.0, 1.0]])
  return affine


def _warp_cv2(array: np.ndarray, affine: np.ndarray, nearest: bool) -> np.ndarray:
  flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
  size = (array.shape[1], array.shape[0])
  if array.ndim == 3 and array.shape[-1] == 3:  # OpenCV's 4-channel path is ~2x faster.
    rgba = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2RGBA)
    return cv2.cvtColor(cv2.warpAffine(rgba, affine, size, flags=flags), cv2.COLOR_RGBA2RGB)
  return cv2.warpAffine(np.ascontiguousarray(array), affine, size, flags=flags)


def _warp_pil(array: np.ndarray, affine: np.ndarray, nearest: bool) -> np.ndarray:
  size = (array.shape[1], array.shape[0])
  if array.ndim == 3 and array.shape[-1] not in (3, 4):
    return np.stack([_warp_pil(array[..., i], affine, nearest)
                     for i in range(array.shape[-1])], axis=-1)
  image = Image.fromarray(np.ascontiguousarray(array))
  resample = Image.NEAREST if nearest else Image.BILINEAR
  return np.asarray(image.transform(size, Image.AFFINE, tuple(affine.ravel()), resample))


def random_warp(element: dict, rng: np.random.Generator, max_degrees: float, max_scale: float,
                flip: bool = False) -> dict:
  """Rotates, zooms, crops (and flips) image (bilinear) and mask (nearest) by one affine map."""
  height, width = element["mask"].shape[:2]
  offset = 0.0 if cv2 is not None else 0.5
  affine = random_affine(rng, height, width, max_degrees, max_scale, flip, offset)
  warp = _warp_cv2 if cv2 is not None else _warp_pil
  return dict(element, image=warp(element["image"], affine, nearest=False),
              mask=warp(element["mask"], affine, nearest=True))


def random_brightness_contrast(element: dict, rng: np.random.Generator, brightness: float,
                               contrast: float) -> dict:
  """(x - channel mean) * c + channel mean + b, through one 256-entry table per channel."""
  image = element["image"]
  factor = 1.0 + rng.uniform(-contrast, contrast)
  shift = 255.0 * rng.uniform(-brightness, brightness)
  channels = 1 if image.ndim == 2 else image.shape[-1]
  if cv2 is not None and channels <= 4:
    means = np.array(cv2.mean(np.ascontiguousarray(image))[:channels])
  else:
    means = image.reshape(-1, channels).mean(axis=0)
  values = np.arange(256, dtype=np.float64)[:, None]
  tables = np.clip(np.rint((values - means) * factor + means + shift), 0, 255).astype(np.uint8)
  if cv2 is not None and channels in (1, 3, 4):
    lut = tables[:, 0] if channels == 1 else tables[None]
    return dict(element, image=cv2.LUT(np.ascontiguousarray(image), lut))
  if channels == 1:
    return dict(element, image=tables[:, 0][image])
  return dict(element, image=np.stack([tables[:, i][image[..., i]] for i in range(channels)], -1))


def make_augment(augment_config):
  """Returns the `(element, rng) -> element` transform the config asks for, or None."""
  hflip = augment_config.get("hflip", False)
  degrees = augment_config.get("rotation_degrees", 0.0)
  scale = augment_config.get("scale", 0.0)
  brightness = augment_config.get("brightness", 0.0)
  contrast = augment_config.get("contrast", 0.0)
  if not (hflip or degrees or scale or brightness or contrast):
    return None

  def augment(element, rng):
    flip = hflip and rng.random() < 0.5
    if degrees or scale:
      element = random_warp(element, rng, degrees, scale, flip=flip)
    elif flip:
      element = dict(element, image=element["image"][:, ::-1], mask=element["mask"][:, ::-1])
    if brightness or contrast:
      element = random_brightness_contrast(element, rng, brightness, contrast)
    return element

  return augment
