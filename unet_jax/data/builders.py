"""The TFDS builder shared by the three datasets: manual download -> array_record, no TensorFlow.

Features are yielded as encoded PNG/JPEG bytes, which TFDS stores without TensorFlow; reading
goes through `builder.as_data_source(split)` (random access, grain consumes it directly).
Builder configs are resolutions: 'native' keeps every image at its downloaded size, 'HxW'
(e.g. '256x384') stores them already resized, so an epoch never decodes a 1918x1280 JPEG again.
"""

import dataclasses
import hashlib
import re

import numpy as np
import tensorflow_datasets as tfds

from unet_jax.data import downloads, imaging
from unet_jax.errors import ConfigError, MissingDataError

VAL_FRACTION = 0.2  # Share of ids (TGS) or cars (Carvana) held out when a download has no val.


@dataclasses.dataclass
class ResolutionConfig(tfds.core.BuilderConfig):
  """A stored resolution: 0 x 0 keeps the downloaded size."""

  height: int = 0
  width: int = 0

  @property
  def size(self) -> tuple[int, int] | None:
    return (self.height, self.width) if self.height else None


def parse_resolution(resolution: str) -> tuple[int, int] | None:
  """'native' -> None, '256x384' -> (256, 384); anything else is a ConfigError."""
  if resolution == "native":
    return None
  match = re.fullmatch(r"(\d+)x(\d+)", str(resolution))
  if not match or not all(int(v) > 0 for v in match.groups()):
    raise ConfigError(f"resolution {resolution!r} is not 'native' or HEIGHTxWIDTH; use e.g. "
                      "--resolution 256x384")
  return int(match.group(1)), int(match.group(2))


def resolution_config(resolution: str) -> ResolutionConfig:
  size = parse_resolution(resolution)
  if size is None:
    return ResolutionConfig(name="native", description="Images at their downloaded size.")
  return ResolutionConfig(name=f"{size[0]}x{size[1]}", height=size[0], width=size[1],
                          description=f"Images resized to {size[0]}x{size[1]} (HxW).")


def hash_split(keys, val_fraction: float = VAL_FRACTION) -> set:
  """The keys held out for validation: the first ceil(fraction * n) by SHA-1, at least one.

  Deterministic, independent of listing order and of any RNG implementation.
  """
  keys = sorted(set(keys), key=lambda k: hashlib.sha1(k.encode()).hexdigest())
  count = min(max(1, int(np.ceil(val_fraction * len(keys)))), max(len(keys) - 1, 0))
  return set(keys[:count])


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Image + mask pairs of a manual download; subclasses say where and how to decode them."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: array_record, built without TensorFlow."}
  BUILDER_CONFIGS = [resolution_config("native")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the original download in manual_dir (see the docstring)."
  CHANNELS = 3  # Image channels stored.
  NATIVE_FORMAT = "png"  # Encoding of native images (JPEG downloads are kept as shipped).
  RESIZED_FORMAT = "png"  # Encoding of resized images.
  EXPECTED = ""  # What manual_dir holds, for messages.
  BAD_FILE_FIX = imaging.RESTORE  # The fix a message about a corrupt file gives.
  BAD_PAIR_FIX = imaging.RESTORE_PAIR  # ... about a mask whose size differs from its image.
  HOMEPAGE = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-overridden-method
    """None: no checksums file to look up (nothing is downloaded; saves importlib_resources)."""
    return None

  def _extra_features(self) -> dict:
    return {}

  def _metadata(self) -> tfds.core.MetadataDict | None:
    """What the prepared data keeps beside its records (metadata.json); None: nothing."""
    return None

  def _image_format(self) -> str:
    return self.RESIZED_FORMAT if self.builder_config.size else self.NATIVE_FORMAT

  def _info(self) -> tfds.core.DatasetInfo:
    height, width = self.builder_config.size or (None, None)
    features = {
        "image": tfds.features.Image(shape=(height, width, self.CHANNELS),
                                     encoding_format=self._image_format()),
        "mask": tfds.features.Image(shape=(height, width, 1), encoding_format="png"),
        "id": tfds.features.Text(),
        **self._extra_features(),
    }
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(features),
                                 supervised_keys=("image", "mask"), homepage=self.HOMEPAGE,
                                 metadata=self._metadata())

  def _manual_dir(self, dl_manager):
    try:
      return downloads.check_manual_dir(dl_manager.manual_dir, self.name, self.EXPECTED)
    except AssertionError:
      raise MissingDataError(f"{self.name}: the manual_dir is missing or empty; download "
                             f"{self.EXPECTED} into it") from None

  def _decode_pair(self, image_member, mask_member):
    """(image array, or its bytes when stored as shipped; (H, W) uint8 mask), checked."""
    raise NotImplementedError

  def _encode_pair(self, key: str, image_member, mask_member, extra=None):
    """(key, stored example) of one pair; raises a one-line error naming a bad file."""
    image, mask = self._decode_pair(image_member, mask_member)
    if not isinstance(image, bytes):
      image = imaging.encode(image, self._image_format())
    return key, {"image": image, "mask": imaging.encode(mask, "png"), "id": key,
                 **(extra or {})}

  def _load_pair(self, image_member, mask_member, draft: bool = False):
    """(image bytes, decoded PIL image, decoded PIL mask), checked to have the same size."""
    size = self.builder_config.size
    mask = imaging.open_image(mask_member.read(), mask_member, fix=self.BAD_FILE_FIX)
    image_bytes = image_member.read()
    image = imaging.open_image(image_bytes, image_member, same_size_as=(mask, mask_member),
                               draft_size=tuple(2 * s for s in size) if draft and size else None,
                               fix=self.BAD_FILE_FIX, pair_fix=self.BAD_PAIR_FIX)
    return image_bytes, image, mask

  def _resize(self, image: np.ndarray, mask: np.ndarray, labels: bool = False):
    size = self.builder_config.size
    if size is None:
      return image, mask
    resize_mask = imaging.resize_labels if labels else imaging.resize_binary
    return imaging.resize_image(image, size), resize_mask(mask, size)


def make_builder(builder_class, resolution: str, data_dir):
  """The `builder_class` builder of `resolution` ('native' or 'HxW') writing array_record."""
  config = resolution_config(resolution)
  listed = {c.name for c in builder_class.BUILDER_CONFIGS}  # Others are custom: TFDS warns.
  return builder_class(data_dir=str(data_dir), file_format="array_record",
                       config=config.name if config.name in listed else config)
