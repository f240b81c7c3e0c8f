"""TFDS builder of the TGS Salt Identification Challenge (Kaggle) train set.

manual_dir holds the Kaggle files as downloaded: `train.zip` (images/ and masks/, or in
`train_masks.zip`) or its extracted `train/images/`, `train/masks/`; and `depths.csv`.
Images are 101x101 gray (shipped as RGB with R == G == B): one channel is stored. Masks are
16-bit {0, 65535} or 8-bit all-zero PNGs: salt is any value > 0, stored as 0/1. The depth `z`
is kept as a feature. Kaggle gives no validation set: 20% of ids, chosen by SHA-1 of the id,
form 'val' (deterministic, stable when ids are added).
"""

import numpy as np
import tensorflow_datasets as tfds

from unet_jax.data import builders, downloads, imaging
from unet_jax.errors import MissingDataError

IMAGES = downloads.Pattern(
    "TGS image", ("train", "images", "train.zip", "competition_data.zip"),
    r"(?:^|/)images/(?P<id>[^/]+)\.png$", "images/<id>.png")
MASKS = downloads.Pattern(
    "TGS mask", ("train", "masks", "train.zip", "train_masks.zip", "competition_data.zip"),
    r"(?:^|/)masks/(?P<id>[^/]+)\.png$", "masks/<id>.png")


class TgsSalt(builders.SegmentationBuilder):
  """TGS Salt: 101x101 gray seismic images, binary salt masks, depth."""

  CHANNELS = 1
  EXPECTED = "the Kaggle TGS Salt train.zip (or train/images, train/masks) and depths.csv"
  HOMEPAGE = "https://www.kaggle.com/c/tgs-salt-identification-challenge"

  def _extra_features(self) -> dict:
    return {"depth": tfds.features.Scalar(dtype=np.float32)}

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    depths = downloads.read_csv_column(manual_dir, "depths.csv", "id", "z")
    pairs = downloads.pair(downloads.find(manual_dir, IMAGES), downloads.find(manual_dir, MASKS),
                           MASKS)
    val_ids = builders.hash_split(key for key, _, _ in pairs)
    return {
        "train": self._generate_examples([p for p in pairs if p[0] not in val_ids], depths),
        "val": self._generate_examples([p for p in pairs if p[0] in val_ids], depths),
    }

  def _decode_pair(self, image_member, mask_member):
    _, image, mask = self._load_pair(image_member, mask_member)
    image, mask = imaging.gray(image), imaging.binary_mask(mask)
    return self._resize(image, mask)

  def _generate_examples(self, pairs, depths):
    for key, image_member, mask_member in pairs:
      if key not in depths:
        raise MissingDataError(
            f"depths.csv has no row for {key} ({image_member}); download depths.csv again")
      yield self._encode_pair(key, image_member, mask_member,
                              {"depth": np.float32(depths[key])})
