"""Decoding, checking, resizing and encoding the images and masks of the downloads (PIL)."""

import io

import numpy as np
from PIL import Image

try:
  import cv2  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - PIL fallback.
  cv2 = None

from unet_jax.data.downloads import BadDataError

JPEG_QUALITY = 95  # Resized caches of JPEG downloads (Carvana): ~25 KB at 256x384, fast to decode.
RESTORE = "restore it from the original download"  # The fix for a bad file of a download.
RESTORE_PAIR = "restore the pair from the original download"  # ... for a mask of another size.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")  # PIL modes of 16-bit gray images.


def open_image(data: bytes, name, draft_size: tuple[int, int] | None = None,
               same_size_as=None, fix: str = RESTORE,
               pair_fix: str = RESTORE_PAIR) -> Image.Image:
  """The decoded PIL image, or a BadDataError naming the file and `fix` (`pair_fix` for sizes).

  `same_size_as` (mask image, mask name) checks the sizes before decoding; `draft_size`
  (height, width) lets a JPEG decode at a reduced scale that stays >= that size.
  """
  try:
    image = Image.open(io.BytesIO(data))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    raise BadDataError(f"cannot decode {name}: not a readable image; the file is corrupt: "
                       f"{fix}") from None
  if same_size_as is not None:
    check_same_size(image, same_size_as[0], name, same_size_as[1], pair_fix)
  try:
    if draft_size is not None and image.format == "JPEG":
      image.draft("RGB", (draft_size[1], draft_size[0]))
    image.load()
    return image
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadDataError(f"cannot decode {name} ({e}); the file is corrupt: {fix}") from None


def check_same_size(image: Image.Image, mask: Image.Image, image_name, mask_name,
                    fix: str = RESTORE_PAIR) -> None:
  if image.size != mask.size:
    raise BadDataError(f"mask {mask_name} is {mask.size[0]}x{mask.size[1]} (WxH) but its image "
                       f"{image_name} is {image.size[0]}x{image.size[1]}; {fix}")


def to_8bit(image: Image.Image) -> Image.Image:
  """16-bit gray scaled to 8-bit 'L' (value / 257, as 65535 -> 255); other modes unchanged.

  PIL's own convert('L') clips 16-bit values at 255 instead.
  """
  if image.mode not in _SIXTEEN_BIT:
    return image
  values = np.clip(np.asarray(image), 0, 65535) / 257.0
  return Image.fromarray(np.round(values).astype(np.uint8))


def is_gray(image: Image.Image) -> bool:
  """True for 1-channel images and colour ones whose R == G == B everywhere (TGS)."""
  if image.mode in ("1", "L", "LA") + _SIXTEEN_BIT:
    return True
  array = rgb(image)
  return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def gray(image: Image.Image) -> np.ndarray:
  """(H, W) uint8: the first channel (TGS stores gray as RGB with R == G == B)."""
  array = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
  return np.ascontiguousarray(array[..., 0] if array.ndim == 3 else array)


def rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def image_array(image: Image.Image, channels: int) -> np.ndarray:
  """uint8 (H, W) for channels 1 (gray, or luminance of colour), else (H, W, 3) RGB.

  16-bit gray is scaled to 8 bits (`to_8bit`); alpha is dropped.
  """
  image = to_8bit(image)
  if channels == 1:
    return gray(image) if is_gray(image) else np.asarray(image.convert("L"))
  return rgb(image)


def binary_mask(image: Image.Image) -> np.ndarray:
  """(H, W) uint8 {0, 1}: foreground is any value > 0 (8-bit or 16-bit PNG)."""
  return (np.asarray(image) > 0).astype(np.uint8)


def palette_mask(image: Image.Image, name) -> np.ndarray:
  """(H, W) uint8 {0, 1} of a palette GIF whose index 1 is the object (Carvana)."""
  if image.mode != "P":
    raise BadDataError(f"mask {name} has mode {image.mode}, not a palette GIF; restore it from "
                       "the original train_masks.zip")
  return (np.asarray(image) == 1).astype(np.uint8)


def label_mask(image: Image.Image, name, max_label: int) -> np.ndarray:
  """(H, W) uint8 class indices, checked to be <= max_label (CamVid: 0..10 and 11 = void)."""
  labels = np.asarray(image)
  if labels.ndim != 2 or labels.dtype != np.uint8:
    raise BadDataError(f"label image {name} is {image.mode}, not an 8-bit index PNG; use the "
                       "SegNet CamVid *annot/ folders")
  if labels.max(initial=0) > max_label:
    raise BadDataError(f"label image {name} has value {labels.max()} > {max_label}; use the "
                       "SegNet 11-class CamVid annotations (0..10, 11 = void)")
  return labels


def resize_image(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Antialiased bilinear resize of a uint8 (H, W) or (H, W, C) image to (height, width)."""
  if array.shape[:2] == tuple(size):
    return array
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR))


def resize_binary(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a {0, 1} mask by area-weighted vote (bilinear of 0/255, then > 127)."""
  if mask.shape[:2] == tuple(size):
    return mask
  soft = resize_image(mask * np.uint8(255), size)
  return (soft > 127).astype(np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of class indices (no invented classes at boundaries)."""
  if labels.shape[:2] == tuple(size):
    return labels
  return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def decode_array(data: bytes) -> np.ndarray:
  """A stored PNG/JPEG as uint8 (H, W) or (H, W, C) RGB; OpenCV when installed (faster)."""
  if cv2 is not None:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is not None:
      if array.ndim == 3:
        code = cv2.COLOR_BGR2RGB if array.shape[-1] == 3 else cv2.COLOR_BGRA2RGBA
        array = cv2.cvtColor(array, code)
      return array
  return np.asarray(Image.open(io.BytesIO(data)))


def encode(array: np.ndarray, image_format: str) -> bytes:
  """PNG (lossless) or JPEG (quality 95) bytes of a uint8 (H, W) or (H, W, C) array."""
  buffer = io.BytesIO()
  if image_format == "jpeg":
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  else:
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()
