"""Predicts masks for a folder or .zip of images; writes mask PNGs and a Kaggle RLE CSV.

  python -m unet_jax.predict --workdir runs/tgs --input test.zip --output runs/tgs/test
      --tta flip --submission submission.csv --format tgs   (one command line)
  python -m unet_jax.predict --workdir runs/cv/fold0 --workdir runs/cv/fold1 ... (an ensemble:
      the runs' probabilities are averaged before thresholding)

Batches have a fixed shape (the last one is padded), so the jitted model compiles once.
Each image is brought to config.image_size as in training (--fit auto): centred and padded by
mirroring when config.data_resolution is 'native' and it fits (TGS 101 -> 128 in :small), the
prediction cropped back; otherwise resized, the prediction resized back to the original size
(Carvana's 1918x1280) unless --noresize_back. An unreadable image stops the run with an
error naming it, before any CSV is written; --skip_unreadable warns, skips it and goes on.
"""

import collections
import concurrent.futures
import dataclasses
import io
import logging
import os
import pathlib
import zipfile
from typing import Callable

import jax
import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from unet_jax import cli, inference, parallel, rle
from unet_jax.data import imaging
from unet_jax.errors import ConfigError, MissingDataError, UserError, WorkdirError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class UnreadableImageError(UserError, OSError):
  """An input file with an image extension that PIL cannot decode."""


@dataclasses.dataclass(frozen=True)
class InputImage:
  name: str  # File name, e.g. 1390696b70b6_01.jpg; the submission id derives from it.
  read: Callable[[], bytes]


def list_inputs(path) -> list[InputImage]:
  """Image files (by extension) in a folder (recursively) or .zip, sorted by name."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    items = [InputImage(p.name, p.read_bytes) for p in files]
  elif zipfile.is_zipfile(path):
    archive = zipfile.ZipFile(path)  # Stays open for the readers; closed at exit.
    names = [n for n in archive.namelist() if not n.endswith("/") and "__MACOSX" not in n
             and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    items = [InputImage(os.path.basename(n), lambda n=n: archive.read(n)) for n in names]
  elif path.exists():
    raise MissingDataError(f"--input {path} is neither a folder nor a .zip; pass a folder or "
                           ".zip of images")
  else:
    raise MissingDataError(f"--input {path} does not exist; pass a folder or .zip of images")
  if not items:
    raise MissingDataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}; pass the "
                           "folder or .zip that holds them")
  return sorted(items, key=lambda item: item.name)


def read_image(item: InputImage, channels: int) -> np.ndarray:
  """uint8 (H, W, channels) or UnreadableImageError naming the file."""
  try:
    with Image.open(io.BytesIO(item.read())) as image:
      if channels in (1, 3):  # As prepare stores them (16-bit gray scaled, not clipped).
        array = imaging.image_array(image, channels)
      else:
        array = np.asarray(image.convert(_PIL_MODES[channels]))
      return array.reshape(image.height, image.width, channels)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = "not an image format PIL knows" if isinstance(e, UnidentifiedImageError) else e
    raise UnreadableImageError(f"cannot read image {item.name}: {reason}; remove or replace "
                               "it, or pass --skip_unreadable") from e


def _resize(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
  """Resizes (H, W[, C]) to `size` = (height, width), channel by channel."""
  if array.shape[:2] == tuple(size):
    return array
  channels = array.reshape(*array.shape[:2], -1)
  out = [np.asarray(Image.fromarray(channels[..., c]).resize(size[::-1], resample))
         for c in range(channels.shape[-1])]
  return np.stack(out, axis=-1).reshape(*size, *array.shape[2:])


def _pad_reflect(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Centres (H, W, C) in `size` with mirrored borders, as data.sources.pad_to does."""
  extra_h, extra_w = size[0] - array.shape[0], size[1] - array.shape[1]
  pads = [(extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2), (0, 0)]
  return np.pad(array, pads, mode="reflect" if min(array.shape[:2]) > 1 else "edge")


def _crop_centre(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  top, left = (array.shape[0] - size[0]) // 2, (array.shape[1] - size[1]) // 2
  return array[top:top + size[0], left:left + size[1]]


def fit_mode(config, image_shape, fit: str = "auto") -> str:
  """'same', 'pad' or 'resize': how an image of `image_shape` reaches config.image_size."""
  size = tuple(config.image_size)
  if tuple(image_shape[:2]) == size:
    return "same"
  fits = image_shape[0] <= size[0] and image_shape[1] <= size[1]
  if fit == "pad" or (fit == "auto" and config.get("data_resolution") == "native" and fits):
    if not fits:
      raise ConfigError(f"--fit=pad: a {image_shape[0]}x{image_shape[1]} image does not fit in "
                        f"image_size {size[0]}x{size[1]}; use --fit=resize or auto")
    return "pad"
  return "resize"


def _ordered_map(pool, fn, items, ahead: int):
  """pool.map with at most `ahead` items in flight (bounded memory for 100k images)."""
  futures = collections.deque()
  for item in items:
    futures.append(pool.submit(fn, item))
    if len(futures) >= ahead:
      yield futures.popleft().result()
  while futures:
    yield futures.popleft().result()


@dataclasses.dataclass
class Options:
  tta: str = "none"
  threshold: float = 0.5
  # Binary: a mask with fewer foreground pixels (at output size) is emptied; None: the run's
  # config.min_area (0 in runs from before it existed).
  min_area: int | None = None
  batch_size: int | None = None  # None: config.eval_batch_size.
  resize_back: bool = True
  fit: str = "auto"  # auto | pad | resize: how images reach config.image_size (see above).
  skip_unreadable: bool = False
  submission: str | None = None
  format: str | None = None  # tgs | carvana; None: config.dataset if it is one of them.
  checkpoint: str = "best"  # best | latest | a step | average:N (mean of the last N).


def _submission_format(model, options: Options) -> str | None:
  if not options.submission:
    return None
  fmt = options.format or (model.config.dataset if model.config.dataset in rle.HEADERS else None)
  if fmt not in rle.HEADERS:
    raise ConfigError(f"--format={fmt!r}: pass --format=tgs or --format=carvana with "
                      "--submission")
  if not model.is_binary:
    raise ConfigError(f"--submission needs a binary model, this one has "
                      f"{model.config.num_classes} classes; leave --submission out")
  return fmt


def _to_mask(probabilities: np.ndarray, original_size, model, options: Options) -> np.ndarray:
  """uint8 mask (H, W): {0, 1} for binary, class indices otherwise, at the output size."""
  mode = fit_mode(model.config, original_size, options.fit)
  if mode == "pad":
    probabilities = _crop_centre(probabilities, original_size)
  size = tuple(original_size) if options.resize_back else probabilities.shape[:2]
  if model.is_binary:
    foreground = _resize(probabilities[..., 0].astype(np.float32), size, Image.BILINEAR)
    mask = (foreground > options.threshold).astype(np.uint8)
    min_area = (model.config.get("min_area", 0) if options.min_area is None
                else options.min_area)
    return mask if mask.sum() >= min_area else np.zeros_like(mask)
  return _resize(probabilities.argmax(-1).astype(np.uint8), size, Image.NEAREST)


class Predictor:
  """Runs a TrainedModel over input images in fixed-shape batches."""

  def __init__(self, model: inference.TrainedModel, options: Options):
    self.model, self.options = model, options
    self.batch_size = options.batch_size or model.config.eval_batch_size
    parallel.check_batch_size(self.batch_size, model.mesh, "batch_size")
    self.predict_fn = inference.make_predict_fn(options.tta)
    self.skipped: list[str] = []

  def _load(self, item: InputImage):
    try:
      image = read_image(item, self.model.input_channels)
    except UnreadableImageError as e:
      if not self.options.skip_unreadable:
        raise
      logging.warning("skipping %s", e)
      self.skipped.append(item.name)
      return None
    size = self.model.image_size
    mode = fit_mode(self.model.config, image.shape, self.options.fit)
    fitted = _pad_reflect(image, size) if mode == "pad" else _resize(image, size, Image.BILINEAR)
    return item.name, image.shape[:2], fitted

  def _batches(self, items, pool):
    batch = []
    loaded = (x for x in _ordered_map(pool, self._load, items, 4 * self.batch_size) if x)
    for example in loaded:
      batch.append(example)
      if len(batch) == self.batch_size:
        yield batch
        batch = []
    if batch:
      yield batch

  def probabilities(self, images: np.ndarray) -> jax.Array:
    """Device probabilities for a batch of exactly batch_size images (asynchronous)."""
    sharded = jax.device_put(images, parallel.batch_sharded(self.model.mesh))
    return self.predict_fn(self.model.state, sharded)

  def run(self, items, finish) -> list:
    """finish(name, original_size, probabilities) for every readable image, in name order."""
    results, pending = [], None
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
      for batch in tqdm(self._batches(items, pool), total=-(-len(items) // self.batch_size),
                        desc="predict", dynamic_ncols=True):
        images = np.stack([image for _, _, image in batch])
        padding = self.batch_size - len(batch)
        images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), np.uint8)])
        probabilities = self.probabilities(images)  # Runs while the last batch is written.
        if pending is not None:
          results.extend(self._finish(pool, finish, *pending))
        pending = (batch, probabilities)
      if pending is not None:
        results.extend(self._finish(pool, finish, *pending))
    return results

  @staticmethod
  def _finish(pool, finish, batch, probabilities):
    probabilities = np.asarray(jax.device_get(probabilities))
    return list(pool.map(lambda i: finish(batch[i][0], batch[i][1], probabilities[i]),
                         range(len(batch))))


def predict(workdir, input_path, output_dir, options: Options = Options()) -> dict:
  """Writes output_dir/<stem>.png masks (binary: 0/255) and the optional submission CSV."""
  model = inference.load_ensemble(workdir, options.checkpoint)
  fmt = _submission_format(model, options)
  items = list_inputs(input_path)
  output_dir = pathlib.Path(output_dir).expanduser()
  try:
    output_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create --output {output_dir}: {e.strerror}; choose a folder "
                       "you can write to") from e

  def finish(name, original_size, probabilities):
    mask = _to_mask(probabilities, original_size, model, options)
    Image.fromarray(mask * 255 if model.is_binary else mask).save(
        output_dir / f"{pathlib.Path(name).stem}.png", compress_level=1)  # Fast; masks compress.
    if fmt is None:
      return None
    return (pathlib.Path(name).stem if fmt == "tgs" else name), rle.encode(mask, fmt)

  predictor = Predictor(model, options)
  rows = predictor.run(items, finish)
  if fmt is not None:
    rle.write_submission(options.submission, rows, fmt)
    logging.info("wrote %d rows to %s", len(rows), options.submission)
  skipped = sorted(predictor.skipped)  # Appended from loader threads, in any order.
  summary = {"predicted": len(items) - len(skipped), "skipped": skipped,
             "output": str(output_dir), "submission": options.submission, "step": model.step,
             "averaged_steps": list(model.averaged_steps)}
  logging.info("predicted %d images into %s with the checkpoint of step %d%s",
               summary["predicted"], output_dir, model.step,
               f"; skipped unreadable {', '.join(skipped)}" if skipped else "")
  return summary


def define_flags() -> None:
  flags.DEFINE_multi_string("workdir", None, "Training run to load (best checkpoint); repeat "
                            "it to average several runs' probabilities (e.g. the folds of "
                            "python -m unet_jax.cross_validate).", required=True)
  flags.DEFINE_string("input", None, "Folder (searched recursively) or .zip of images.",
                      required=True)
  flags.DEFINE_string("output", None, "Folder for the mask PNGs (<stem>.png).", required=True)
  flags.DEFINE_enum("tta", "none", ["none", "flip"], "flip: average with the mirrored pass.")
  flags.DEFINE_string("checkpoint", "best", f"Which weights: {inference.CHECKPOINT_CHOICES}.")
  flags.DEFINE_float("threshold", 0.5, "Binary: foreground if probability > this.")
  flags.DEFINE_integer("min_area", None, "Binary: empty every mask with fewer foreground "
                       "pixels than this (default: the run's config.min_area; choose it with "
                       "cross_validate or evaluate --threshold_search --min_areas).",
                       lower_bound=0)
  flags.DEFINE_integer("batch_size", None, "Images per batch (default config.eval_batch_size).")
  flags.DEFINE_enum("fit", "auto", ["auto", "pad", "resize"], "How images reach "
                    "config.image_size: auto pads (mirrored) like training when "
                    "data_resolution is 'native' and the image fits, else resizes.")
  flags.DEFINE_bool("resize_back", True, "Resize masks back to each image's original size.")
  flags.DEFINE_bool("skip_unreadable", False, "Unreadable images: by default the run stops with "
                    "an error naming the file; with this flag it warns, names it, skips it and "
                    "leaves it out of the submission.")
  flags.DEFINE_string("submission", None, "Write a Kaggle run-length CSV here.")
  flags.DEFINE_enum("format", None, ["tgs", "carvana"], "CSV format (default: config.dataset).")


def main(argv):
  cli.reject_extra_args(argv)
  f = flags.FLAGS
  with cli.exit_on_user_error():
    predict(f.workdir, f.input, f.output, Options(
        tta=f.tta, threshold=f.threshold, min_area=f.min_area, batch_size=f.batch_size, fit=f.fit,
        resize_back=f.resize_back,
        skip_unreadable=f.skip_unreadable, submission=f.submission, format=f.format,
        checkpoint=f.checkpoint))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
