"""Prepared datasets as grain random-access sources of fixed-size {image, mask} elements."""

import pathlib

import numpy as np
import tqdm
from absl import logging as absl_logging
import tensorflow_datasets as tfds

from unet_jax.data import builders, camvid, carvana, folder, folds, imaging, tgs_salt
from unet_jax.errors import ConfigError, MissingDataError

BUILDERS = {"tgs": tgs_salt.TgsSalt, "carvana": carvana.Carvana, "camvid": camvid.Camvid,
            "folder": folder.Folder}


def manual_dir_hint(dataset: str) -> str:
  """Where the prepare command examples say the original files are."""
  return "YOUR_FOLDER" if dataset == "folder" else f"~/Downloads/{dataset}"


def prepare_command(dataset: str, data_dir, resolution: str = "native") -> str:
  """The exact command that prepares `dataset` at `resolution` into `data_dir`."""
  command = (f"python -m unet_jax.data.prepare --dataset {dataset} "
             f"--manual_dir {manual_dir_hint(dataset)} --data_dir {data_dir}")
  return command if resolution == "native" else f"{command} --resolution {resolution}"


def prepared_builder(dataset: str, resolution: str, data_dir):
  """The TFDS builder of a prepared dataset, or a MissingDataError giving the prepare command."""
  data_path = pathlib.Path(data_dir).expanduser()
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns of a missing variant folder.
  try:
    builder = builders.make_builder(BUILDERS[dataset], resolution, data_path)
    prepared = builder.is_prepared()
  finally:
    absl_logging.set_verbosity(verbosity)
  if not prepared:
    raise MissingDataError(
        f"{dataset} ({resolution}) is not prepared in {builder.data_path}; put the original "
        f"files in {manual_dir_hint(dataset)} and run: "
        f"{prepare_command(dataset, data_dir, resolution)}")
  return builder


def pad_to(array: np.ndarray, size: tuple[int, int], value: int | None = None) -> np.ndarray:
  """Centres `array` in `size` (height, width): mirrored borders, or `value` when given."""
  extra_h, extra_w = size[0] - array.shape[0], size[1] - array.shape[1]
  if extra_h == extra_w == 0:
    return array
  pads = [(extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)]
  pads += [(0, 0)] * (array.ndim - 2)
  if imaging.cv2 is not None and (array.ndim == 2 or array.shape[-1] <= 4):
    (top, bottom), (left, right) = pads[:2]
    border = imaging.cv2.BORDER_REFLECT_101 if value is None else imaging.cv2.BORDER_CONSTANT
    padded = imaging.cv2.copyMakeBorder(array, top, bottom, left, right, border,
                                        value=0 if value is None else (value,) * 4)
    return padded.reshape(size + array.shape[2:])  # OpenCV drops a trailing 1-channel axis.
  if value is None:
    return np.pad(array, pads, mode="reflect")
  return np.pad(array, pads, mode="constant", constant_values=value)


def crop_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The inverse of `pad_to`: the centred `size` (height, width) window of an (H, W, ...) array."""
  top, left = (array.shape[0] - size[0]) // 2, (array.shape[1] - size[1]) // 2
  return array[top:top + size[0], left:left + size[1]]


class PreparedSource:
  """Records of one prepared split as {'image', 'mask'[, 'depth']} of `image_size`.

  `data_source` yields the stored PNG/JPEG bytes (TFDS SkipDecoding); decoding them here with
  OpenCV is ~2x faster than TFDS' own decoder, which copies twice.

  Gray images come out (H, W), colour (H, W, 3), masks (H, W), all uint8; smaller stored
  images are centred and padded (mirrored; masks with `mask_pad_value` when set, e.g. void).
  """

  def __init__(self, data_source, image_size: tuple[int, int], mask_pad_value: int | None,
               name: str = ""):
    self.data_source = data_source
    self.image_size = tuple(image_size)
    self.mask_pad_value = mask_pad_value
    self.name = name

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict:
    record = self.data_source[index]
    image, mask = imaging.decode_array(record["image"]), imaging.decode_array(record["mask"])
    if image.shape[0] > self.image_size[0] or image.shape[1] > self.image_size[1]:
      raise ConfigError(f"{self.name} stores {image.shape[0]}x{image.shape[1]} images, larger "
                        f"than image_size {self.image_size[0]}x{self.image_size[1]}; set "
                        "--config.data_resolution to a prepared HxW that fits, or raise image_size")
    element = {"image": pad_to(image, self.image_size),
               "mask": pad_to(mask, self.image_size, self.mask_pad_value)}
    if "depth" in record:
      element["depth"] = np.float32(record["depth"])
    return element

  def __repr__(self) -> str:
    return f"PreparedSource({self.name}, n={len(self)}, size={self.image_size})"


class InMemorySource:
  """A source decoded once into RAM: reading an element is then an array lookup.

  For splits whose decoded size fits the budget (TGS: 4000 x 2 x 128 x 128 bytes = 131 MB),
  the input pipeline stops decoding PNG/JPEG every epoch.
  """

  def __init__(self, source, name: str = ""):
    first = source[0]
    self.arrays = {k: np.empty((len(source),) + np.shape(v), np.asarray(v).dtype)
                   for k, v in first.items()}
    for index in tqdm.tqdm(range(len(source)), desc=f"decoding {name} into memory",
                           leave=False, disable=len(source) < 2000):
      for key, value in source[index].items():
        self.arrays[key][index] = value
    if hasattr(source, "data_source"):  # The stored records stay reachable (scoring window).
      self.data_source = source.data_source
    self.name = name

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, index: int) -> dict:
    return {key: values[index] for key, values in self.arrays.items()}

  def __repr__(self) -> str:
    return f"InMemorySource({self.name}, n={len(self)})"


def _decoded_megabytes(first_element: dict, count: int) -> float:
  return count * sum(np.asarray(v).nbytes for v in first_element.values()) / 2**20


def _stored_records(config, split: str):
  """(records of `split` as stored: encoded images, name); with config.num_folds, fold
  config.fold of the pooled train + val records (folds.py), or of the train records alone with
  config.fold_holdout, whose val records are then the split 'holdout'."""
  height, width = config.image_size
  resolution = config.data_resolution or f"{height}x{width}"
  builder = prepared_builder(config.dataset, resolution, config.data_dir)
  name = f"{builder.name}/{builder.builder_config.name}"
  num_folds = folds.check(config)
  holdout = bool(num_folds and config.get("fold_holdout", False))
  if split == "holdout":
    if not holdout:
      raise ConfigError("split 'holdout' is the prepared val split kept out of every fold; "
                        "train with --config.num_folds=K --config.fold_holdout=True, or ask "
                        "for val")
    num_folds, split = 0, "val"
  wanted = (("train",) if holdout else ("train", "val")) if num_folds else (split,)
  for part in wanted:
    if part not in builder.info.splits:
      raise ConfigError(f"{config.dataset} has no split {part!r}; it has "
                        f"{', '.join(builder.info.splits)}")
  skip = tfds.decode.SkipDecoding()
  parts = [builder.as_data_source(part, decoders={"image": skip, "mask": skip}) for part in wanted]
  if not num_folds:
    return parts[0], f"{name}:{'holdout' if holdout else split}"
  pooled = folds.Pooled(parts)
  group_regex = (builder.info.metadata or {}).get("options", {}).get("group_regex", "")
  fold_of = folds.assign(config.dataset, pooled, num_folds, group_regex)
  held_out = fold_of == config.fold
  indices = np.flatnonzero(held_out if split == "val" else ~held_out)
  return folds.Subset(pooled, indices), f"{name}:fold{config.fold}of{num_folds}-{split}"


def load_prepared(config, split: str):
  """The `split` of `config.dataset` prepared in `config.data_dir`, at `config.image_size`."""
  records, name = _stored_records(config, split)
  source = PreparedSource(records, tuple(config.image_size),
                          config.ignore_index if config.ignore_index >= 0 else None, name=name)
  if not len(source):
    return source
  first = source[0]  # A size mismatch fails now, not mid-epoch.
  if _decoded_megabytes(first, len(source)) <= config.get("cache_decoded_mb", 0):
    return InMemorySource(source, name=source.name)
  return source
