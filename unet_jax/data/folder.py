"""TFDS builder of a user's own image/mask folder: `--dataset folder` ("train on your images").

  python -m unet_jax.data.prepare --dataset folder --manual_dir DIR [--resolution 256x256]

DIR holds images/<name>.<ext> and masks/<name>.<ext> (PNG, JPEG, TIFF, GIF or BMP; other
layouts through --image_glob, --mask_glob, --mask_name; see folder_layout.py). The folder is
read once here; training reads the prepared records like any other dataset.
- Images: stored with 1 channel when every image is gray (1-channel, or colour with
  R == G == B everywhere), else RGB; 16-bit gray is scaled to 8 bits (/257), alpha dropped.
  Native JPEG and PNG images already in that mode are stored as shipped.
- Masks: binary by default: foreground is any value > 0 (palette masks: index > 0; colour
  masks: any channel > 0; JPEG masks, which are lossy: > half their maximum), stored as 0/1.
  `--classes` maps mask values to class ids instead (`parse_classes`); `void` marks pixels
  left out of loss and metrics, stored as VOID = 255 (configs/folder.py's ignore_index, also
  the label of the padding that brings smaller images to image_size).
- Sizes: any, mixed; stored as they are ('native': padded to image_size in training) or
  resized to --resolution HxW.
The options and what training needs (channels, num_classes, sizes) are kept in the prepared
folder's metadata.json; prepare prints the training command from them.
"""

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from unet_jax.data import builders, folder_layout, imaging
from unet_jax.data.downloads import BadDataError
from unet_jax.errors import ConfigError

VOID = 255  # Stored label of void pixels and of padding; class ids are 0..254.
FIX = "replace it, or delete it and its image or mask"  # The fix for an unreadable file.
PAIR_FIX = "save the mask at its image's size, or delete the pair"  # ... for a size mismatch.
_LISTED_VALUES = 32  # Distinct binary-mask values kept in the metadata.


@dataclasses.dataclass(frozen=True)
class ClassMap:
  """Mask value (int: gray, 16-bit or palette index; or 0xRRGGBB colour) -> class id/VOID."""

  classes: dict
  colours: bool

  @property
  def num_classes(self) -> int:
    """config.num_classes: 1 (sigmoid) when the ids are within {0, 1}, else max id + 1."""
    ids = {i for i in self.classes.values() if i != VOID}
    return 1 if ids <= {0, 1} else max(ids) + 1

  @property
  def binary(self) -> bool:
    return self.num_classes == 1

  def key_name(self, key: int) -> str:
    return f"#{key:06x}" if self.colours else str(key)


def parse_classes(text: str) -> ClassMap | None:
  """'0:0,128:1,255:void' (values) or '#000000:0,#800000:1' (RGB colours) -> ClassMap.

  Entries `KEY:ID` are separated by commas; KEY is a mask value or a #rrggbb colour, ID a
  class id 0..254 or `void`. '' -> None (binary: foreground is mask > 0).
  """
  if not text.strip():
    return None
  classes, kinds = {}, set()
  for entry in text.split(","):
    key, sep, class_id = (part.strip() for part in entry.strip().partition(":"))
    try:
      if not sep:
        raise ValueError
      colour = key.startswith("#")
      if colour and len(key) != 7:
        raise ValueError
      value = int(key[1:], 16) if colour else int(key)
      label = VOID if class_id.lower() == "void" else int(class_id)
      if value < 0 or not 0 <= label <= VOID:
        raise ValueError
    except ValueError:
      raise ConfigError(f"--classes entry {entry.strip()!r} is not VALUE:ID; write e.g. "
                        "--classes '0:0,128:1,255:void' or '#000000:0,#800000:1' (ids 0..254 "
                        "or void)") from None
    if value in classes:
      raise ConfigError(f"--classes maps {key} twice; give each mask value one class id")
    classes[value] = label
    kinds.add(colour)
  if len(kinds) > 1:
    raise ConfigError("--classes mixes #rrggbb colours and plain values; use one kind")
  return ClassMap(classes, colours=kinds == {True})


def _mask_values(image, name, colours: bool, any_channel: bool = False) -> np.ndarray:
  """(H, W) ints: palette indices, gray or 16-bit values; or colours packed as 0xRRGGBB."""
  if colours:
    array = imaging.rgb(image).astype(np.int32)
    return (array[..., 0] << 16) | (array[..., 1] << 8) | array[..., 2]
  if image.mode in ("P", "L", "1") or image.mode.startswith("I"):
    return np.asarray(image).astype(np.int32 if image.mode.startswith("I") else np.uint8)
  if image.mode in ("LA", "PA"):
    return np.asarray(image)[..., 0]
  array = imaging.rgb(image)
  if any_channel:
    return array.max(axis=-1)
  if not imaging.is_gray(image):
    raise BadDataError(f"mask {name} is colour ({image.mode}) but --classes maps plain values; "
                       "map its colours instead, e.g. --classes '#000000:0,#800000:1'")
  return array[..., 0]


def _found(values: np.ndarray) -> np.ndarray:
  """The distinct values of `values`, sorted (bincount for small ints: faster than unique)."""
  if values.dtype.kind in "ub" or (values.size and 0 <= values.min() and values.max() < 2**16):
    return np.flatnonzero(np.bincount(values.ravel(), minlength=1))
  return np.unique(values)


def mask_labels(image, name, class_map: ClassMap | None) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (H, W) labels: 0/1, or class ids and VOID; the mask's distinct raw values)."""
  lossy = image.format == "JPEG"
  if class_map is None:
    values = _mask_values(image, name, colours=False, any_channel=True)
    threshold = values.max(initial=0) // 2 if lossy else 0  # JPEG: the brighter half.
    return (values > threshold).astype(np.uint8), _found(values)
  values = _mask_values(image, name, class_map.colours)
  found = _found(values)
  unknown = [int(v) for v in found if int(v) not in class_map.classes]
  if unknown:
    listed = ", ".join(class_map.key_name(v) for v in unknown[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    hint = " (JPEG masks are lossy: save masks as PNG)" if lossy else ""
    raise BadDataError(
        f"mask {name} has values {listed}{more} that --classes does not map (it maps "
        f"{', '.join(class_map.key_name(v) for v in sorted(class_map.classes))}){hint}; add "
        "them to --classes (as a class id or void) or fix the mask")
  lut = {int(v): class_map.classes[int(v)] for v in found}
  if class_map.colours or values.max(initial=0) >= 2**16:
    keys, inverse = np.unique(values, return_inverse=True)
    labels = np.array([lut[int(k)] for k in keys], np.uint8)[inverse]
  else:
    table = np.zeros(int(values.max(initial=0)) + 1, np.uint8)
    table[list(lut)] = list(lut.values())
    labels = table[values]
  return labels.reshape(values.shape), found


def scan_channels(pairs) -> int:
  """1 when every image is gray (stops at the first colour one), else 3."""
  for _, image_member, _ in pairs:
    if not imaging.is_gray(imaging.to_8bit(
        imaging.open_image(image_member.read(), image_member, fix=FIX))):
      return 3
  return 1


def stored_metadata(data_path) -> dict:
  """The metadata.json of a prepared folder dataset; {} where there is none."""
  path = pathlib.Path(data_path) / "metadata.json"
  return json.loads(path.read_text()) if path.is_file() else {}


@dataclasses.dataclass
class FolderConfig(builders.ResolutionConfig):
  """A resolution with the options that read the folder and the channel count found."""

  options: folder_layout.Options = dataclasses.field(default_factory=folder_layout.Options)
  channels: int = 0  # 0: as stored in the prepared data's metadata (reading).


class Folder(builders.SegmentationBuilder):
  """A user's image/mask folder: binary or multi-class masks, any sizes."""

  BUILDER_CONFIGS = []  # Every config is made here: a resolution with the folder's options.
  EXPECTED = "images/ and masks/ (or the folders --image_glob and --mask_glob name)"
  BAD_FILE_FIX = FIX
  BAD_PAIR_FIX = PAIR_FIX
  RELEASE_NOTES = {"1.0.0": "First release: any image/mask folder."}

  def _info(self) -> tfds.core.DatasetInfo:
    channels = getattr(self.builder_config, "channels", 0)
    self.CHANNELS = channels or stored_metadata(self.data_path).get("channels", 3)
    return super()._info()

  def _metadata(self):
    return tfds.core.MetadataDict()

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    options = self.builder_config.options
    splits = folder_layout.find_splits(manual_dir, options)
    self._class_map = parse_classes(options.classes)
    self._sizes, self._values = [], set()
    binary = self._class_map is None or self._class_map.binary
    void = self._class_map is not None and VOID in self._class_map.classes.values()
    self.info.metadata.update({
        "channels": self.CHANNELS, "num_classes": 1 if binary else self._class_map.num_classes,
        "void": VOID if void else None, "ignore_index": VOID,
        "options": options_record(manual_dir, options)})
    return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

  def _decode_pair(self, image_member, mask_member):
    image_bytes, image, mask = self._load_pair(image_member, mask_member, draft=True)
    labels, found = mask_labels(mask, mask_member, self._class_map)
    self._sizes.append((mask.size[1], mask.size[0]))
    if self._class_map is None and len(self._values) <= _LISTED_VALUES:
      self._values.update(int(v) for v in found[:_LISTED_VALUES + 1])
    size = self.builder_config.size
    mode = "L" if self.CHANNELS == 1 else "RGB"
    if size is None and image.format in ("JPEG", "PNG") and image.mode == mode:
      return image_bytes, labels  # As shipped.
    array = imaging.image_array(image, self.CHANNELS)
    if size is not None:
      binary = self._class_map is None or set(self._class_map.classes.values()) <= {0, 1}
      array = imaging.resize_image(array, size)
      labels = (imaging.resize_binary if binary else imaging.resize_labels)(labels, size)
    return imaging.encode(array, "jpeg" if size and image.format == "JPEG" else "png"), labels

  def _generate_examples(self, pairs):
    for key, image_member, mask_member in pairs:
      yield self._encode_pair(key, image_member, mask_member)
    self._record_sizes()

  def _record_sizes(self) -> None:
    size = self.builder_config.size
    sizes = np.array([size] if size else self._sizes)
    self.info.metadata.update({
        "min_size": sizes.min(axis=0).tolist(), "max_size": sizes.max(axis=0).tolist(),
        "mask_values": sorted(self._values)[:_LISTED_VALUES] if self._class_map is None else None})


def options_record(manual_dir, options: folder_layout.Options) -> dict:
  """What a prepared folder was read from and with: equal records may reuse it."""
  return {"manual_dir": str(pathlib.Path(manual_dir).expanduser().resolve()),
          **dataclasses.asdict(options)}


def _unchanged_builder(manual_dir, data_dir, resolution, options, overwrite: bool):
  """The already prepared builder when its options equal these; a ConfigError when not."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns of a custom config.
  try:
    builder = builders.make_builder(Folder, resolution, data_dir)
    prepared = builder.is_prepared()
  finally:
    absl_logging.set_verbosity(verbosity)
  if not prepared or overwrite:
    return None
  stored, wanted = builder.info.metadata.get("options") or {}, options_record(manual_dir, options)
  changed = [f"{key} {stored.get(key)!r} (now {value!r})" for key, value in wanted.items()
             if stored.get(key) != value]
  if changed:
    raise ConfigError(f"{builder.data_path} was prepared with other options: "
                      f"{'; '.join(changed)}; pass --overwrite to rebuild it, or another "
                      "--data_dir")
  return builder


def make_builder(manual_dir, data_dir, resolution: str, options: folder_layout.Options,
                 overwrite: bool = False):
  """The Folder builder of `manual_dir` read with `options` at `resolution` ('native'/'HxW').

  Reuses a prepared one only if it was read from the same folder with the same options.
  Lists and pairs the files and finds the channel count before anything is written.
  """
  parse_classes(options.classes)
  builder = _unchanged_builder(manual_dir, data_dir, resolution, options, overwrite)
  if builder is not None:
    return builder
  splits = folder_layout.find_splits(pathlib.Path(manual_dir), options)
  channels = scan_channels([pair for pairs in splits.values() for pair in pairs])
  base = builders.resolution_config(resolution)
  config = FolderConfig(name=base.name, height=base.height, width=base.width,
                        description=base.description, options=options, channels=channels)
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return Folder(data_dir=str(data_dir), file_format="array_record", config=config)
  finally:
    absl_logging.set_verbosity(verbosity)


def describe(metadata: dict) -> str:
  """One line on what a prepared folder holds, from its metadata."""
  classes = metadata["num_classes"]
  kind = "binary masks" if classes == 1 else f"{classes} classes"
  void = f", void stored as {metadata['void']}" if metadata.get("void") is not None else ""
  values = metadata.get("mask_values") or []
  found = f" (mask values found: {', '.join(map(str, values))})" if values else ""
  if len(values) > 2:
    found += "; foreground is every value > 0: pass --classes if these values are classes"
  sizes = " to ".join(dict.fromkeys("x".join(map(str, metadata[k]))
                                    for k in ("min_size", "max_size")))
  return f"{metadata['channels']}-channel images of {sizes} (HxW), {kind}{void}{found}"


def train_flags(metadata, resolution: str, depth: int = 4) -> str:
  """--config flags for configs/folder.py that fit what was prepared (sizes padded to 2**depth)."""
  multiple = 2**depth
  height, width = (-(-s // multiple) * multiple for s in metadata["max_size"])
  flags = f" --config.image_size='({height}, {width})'"
  if resolution != "native":
    flags = f" --config.data_resolution={resolution}" + flags
  if metadata["num_classes"] > 1:
    flags += (f" --config.num_classes={metadata['num_classes']} --config.loss=softmax_ce "
              "--config.best_metric=miou")
  return flags
