"""TFDS builder of the Carvana Image Masking Challenge (Kaggle) train set.

manual_dir holds the Kaggle files as downloaded: `train.zip` (or `train_hq.zip`) and
`train_masks.zip`, or their extracted `train/` (`train_hq/`) and `train_masks/` folders.
Images are 1918x1280 JPEGs named <car>_<angle>.jpg; masks are 2-colour palette GIFs where
palette index 1 is the car, stored as 0/1 PNGs. The 16 angles of a car are near-duplicates,
so 'val' holds whole cars: 20% of car ids, chosen by SHA-1 of the id (at least one).
The native config keeps the JPEGs as shipped; 'HxW' configs store JPEG (quality 95) resized
images, ~25 KB each at 256x384, so an epoch decodes small JPEGs only.
"""

import re

from unet_jax.data import builders, downloads, imaging

IMAGES = downloads.Pattern(
    "Carvana image", ("train", "train.zip", "train_hq", "train_hq.zip"),
    r"(?:^|/)(?P<id>[^/]+_\d\d)\.jpg$", "train/<car>_<angle>.jpg")
MASKS = downloads.Pattern(
    "Carvana mask", ("train_masks", "train_masks.zip"),
    r"(?:^|/)(?P<id>[^/]+_\d\d)_mask\.gif$", "train_masks/<car>_<angle>_mask.gif")


def car_id(image_id: str) -> str:
  """'00087a6bd4dc_01' -> '00087a6bd4dc'."""
  return re.sub(r"_\d\d$", "", image_id)


class Carvana(builders.SegmentationBuilder):
  """Carvana: 1918x1280 car photos, binary car masks; val split by car."""

  BUILDER_CONFIGS = [builders.resolution_config(r)
                     for r in ("native", "256x384", "512x768", "640x960", "1024x1536")]
  NATIVE_FORMAT = "jpeg"
  RESIZED_FORMAT = "jpeg"
  EXPECTED = "the Kaggle Carvana train.zip (or train_hq.zip) and train_masks.zip, or train/ and "\
             "train_masks/"
  HOMEPAGE = "https://www.kaggle.com/c/carvana-image-masking-challenge"

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    pairs = downloads.pair(downloads.find(manual_dir, IMAGES), downloads.find(manual_dir, MASKS),
                           MASKS)
    val_cars = builders.hash_split(car_id(key) for key, _, _ in pairs)
    return {
        "train": self._generate_examples([p for p in pairs if car_id(p[0]) not in val_cars]),
        "val": self._generate_examples([p for p in pairs if car_id(p[0]) in val_cars]),
    }

  def _decode_pair(self, image_member, mask_member):
    image_bytes, image, mask = self._load_pair(image_member, mask_member, draft=True)
    mask = imaging.palette_mask(mask, mask_member)
    if self.builder_config.size is None and image.format == "JPEG":
      return image_bytes, mask  # As shipped: decoding it again at train time is the same.
    return self._resize(imaging.rgb(image), mask)

  def _generate_examples(self, pairs):
    for key, image_member, mask_member in pairs:
      yield self._encode_pair(key, image_member, mask_member)
