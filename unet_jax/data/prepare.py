"""Builds a dataset from its original download into TFDS array_record files (no TensorFlow).

  python -m unet_jax.data.prepare --dataset carvana --manual_dir ~/Downloads/carvana \\
      --data_dir ~/tensorflow_datasets --resolution 256x384

--resolution native keeps the downloaded size; HxW stores images already resized, so training
never decodes full-size images. A failed or interrupted build leaves no complete-looking data
(TFDS writes into an `incomplete.*` folder and renames it only at the end).

Your own images (unet_jax/data/folder.py): DIR/images/* and DIR/masks/* (same names):
  python -m unet_jax.data.prepare --dataset folder --manual_dir DIR [--resolution 256x256]
      [--mask_name '{stem}_mask.png'] [--classes '0:0,128:1,255:void'] [--group_regex ...]
"""

import pathlib

from absl import flags, logging
import tensorflow_datasets as tfds

from unet_jax import cli
from unet_jax.data import builders, downloads, folder, folder_layout, sources
from unet_jax.errors import ConfigError

_DATASET = flags.DEFINE_enum("dataset", None, sorted(sources.BUILDERS), "Dataset to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "Folder with the original download (zips or extracted).")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets",
                                "Where the prepared data goes (config.data_dir).")
_RESOLUTION = flags.DEFINE_string("resolution", "native",
                                  "'native' or HEIGHTxWIDTH of the stored images, e.g. 256x384.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if already prepared.")
_FOLDER_DEFAULTS = folder_layout.Options()
_FOLDER_FLAGS = {  # --dataset folder only: folder_layout.Options fields.
    "image_glob": flags.DEFINE_string("image_glob", _FOLDER_DEFAULTS.image_glob,
                                      "folder: images, relative to --manual_dir."),
    "mask_glob": flags.DEFINE_string("mask_glob", _FOLDER_DEFAULTS.mask_glob,
                                     "folder: masks, relative to --manual_dir."),
    "mask_name": flags.DEFINE_string("mask_name", _FOLDER_DEFAULTS.mask_name,
                                     "folder: a mask's file name from its image's {stem}, e.g. "
                                     "'{stem}_mask.png'; * is any text (the default: any "
                                     "extension)."),
    "classes": flags.DEFINE_string("classes", _FOLDER_DEFAULTS.classes,
                                   "folder: '' = binary (mask > 0), else VALUE:ID entries, e.g. "
                                   "'0:0,128:1,255:void' or '#000000:0,#800000:1,#ffffff:void'."),
    "val_fraction": flags.DEFINE_float("val_fraction", _FOLDER_DEFAULTS.val_fraction,
                                       "folder without val/: share of ids (or groups) in val."),
    "group_regex": flags.DEFINE_string("group_regex", _FOLDER_DEFAULTS.group_regex,
                                       "folder: ids whose first regex group is equal share a "
                                       r"split, e.g. '^(.+)_\d\d$' for Carvana's 16 angles."),
}


def prepare(dataset: str, manual_dir, data_dir, resolution: str = "native",
            overwrite: bool = False, options: folder_layout.Options | None = None):
  """Builds `dataset` from `manual_dir` into `data_dir`; returns the prepared TFDS builder.

  `options` say how to read a folder (dataset 'folder' only).
  """
  builder_class = sources.BUILDERS[dataset]
  manual_dir = downloads.check_manual_dir(manual_dir, dataset, builder_class.EXPECTED)
  data_dir = pathlib.Path(data_dir).expanduser()
  if dataset == "folder":
    builder = folder.make_builder(manual_dir, data_dir, resolution,
                                  options or folder_layout.Options(), overwrite)
  else:
    builder = builders.make_builder(builder_class, resolution, data_dir)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), download_mode=mode))
  return builder


def _folder_options() -> folder_layout.Options | None:
  """The folder flags as Options; a ConfigError when one is given for another dataset."""
  given = [f"--{name}" for name, flag in _FOLDER_FLAGS.items() if flags.FLAGS[flag.name].present]
  if _DATASET.value != "folder":
    if given:
      raise ConfigError(f"{', '.join(given)} only apply to --dataset folder; drop them")
    return None
  return folder_layout.Options(**{name: flag.value for name, flag in _FOLDER_FLAGS.items()})


def main(argv):
  cli.reject_extra_args(argv)
  with cli.exit_on_user_error():
    if not _DATASET.value:
      raise ConfigError("--dataset is required; choose one of "
                                f"{', '.join(sorted(sources.BUILDERS))}")
    builder = prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _RESOLUTION.value,
                      _OVERWRITE.value, _folder_options())
    counts = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
    metadata = dict(builder.info.metadata or {})
    if _DATASET.value == "folder":
      logging.info("%s", folder.describe(metadata))
    logging.info("%s ready in %s (%s); train with: %s", builder.name, builder.data_path, counts,
                 train_command(_DATASET.value, _DATA_DIR.value, _RESOLUTION.value, metadata))


def train_command(dataset: str, data_dir: str, resolution: str, metadata=None) -> str:
  """The command that trains on what was just prepared (folder: from its `metadata`)."""
  command = (f"python -m unet_jax.main --config configs/{dataset}.py --workdir runs/{dataset} "
             f"--config.data_dir={data_dir}")
  size = builders.parse_resolution(resolution)
  if dataset == "folder":
    command += folder.train_flags(metadata, resolution)
  elif dataset == "carvana" and size and size != (256, 384):
    command += f" --config.image_size='({size[0]}, {size[1]})'"
  elif dataset != "carvana" and size:  # Padded up to a multiple of 16 (a depth-4 U-Net).
    padded = tuple(-(-s // 16) * 16 for s in size)
    command += (f" --config.data_resolution={resolution} "
                f"--config.image_size='({padded[0]}, {padded[1]})'")
  return command


if __name__ == "__main__":
  cli.run(main)
