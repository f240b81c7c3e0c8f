"""Builds a dataset from its original download into TFDS array_record files (no TensorFlow).

  python -m unet_jax.data.prepare --dataset carvana --manual_dir ~/Downloads/carvana \\
      --data_dir ~/tensorflow_datasets --resolution 256x384

--resolution native keeps the downloaded size; HxW stores images already resized, so training
never decodes full-size images. A failed or interrupted build leaves no complete-looking data
(TFDS writes into an `incomplete.*` folder and renames it only at the end).
"""

import pathlib

from absl import flags, logging
import tensorflow_datasets as tfds

from unet_jax import cli
from unet_jax.data import builders, downloads, sources
from unet_jax.errors import ConfigError

_DATASET = flags.DEFINE_enum("dataset", None, sorted(sources.BUILDERS), "Dataset to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "Folder with the original download (zips or extracted).")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets",
                                "Where the prepared data goes (config.data_dir).")
_RESOLUTION = flags.DEFINE_string("resolution", "native",
                                  "'native' or HEIGHTxWIDTH of the stored images, e.g. 256x384.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if already prepared.")


def prepare(dataset: str, manual_dir, data_dir, resolution: str = "native",
            overwrite: bool = False):
  """Builds `dataset` from `manual_dir` into `data_dir`; returns the prepared TFDS builder."""
  builder_class = sources.BUILDERS[dataset]
  manual_dir = downloads.check_manual_dir(manual_dir, dataset, builder_class.EXPECTED)
  data_dir = pathlib.Path(data_dir).expanduser()
  builder = builders.make_builder(builder_class, resolution, data_dir)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), download_mode=mode))
  return builder


def main(argv):
  cli.reject_extra_args(argv)
  with cli.exit_on_user_error():
    if not _DATASET.value:
      raise ConfigError("--dataset is required; choose one of "
                                f"{', '.join(sorted(sources.BUILDERS))}")
    builder = prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, _RESOLUTION.value,
                      _OVERWRITE.value)
    counts = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
    logging.info("%s ready in %s (%s); train with: %s", builder.name, builder.data_path, counts,
                 train_command(_DATASET.value, _DATA_DIR.value, _RESOLUTION.value))


def train_command(dataset: str, data_dir: str, resolution: str) -> str:
  """The command that trains on what was just prepared."""
  command = (f"python -m unet_jax.main --config configs/{dataset}.py --workdir runs/{dataset} "
             f"--config.data_dir={data_dir}")
  size = builders.parse_resolution(resolution)
  if dataset == "carvana" and size and size != (256, 384):
    command += f" --config.image_size='({size[0]}, {size[1]})'"
  elif dataset != "carvana" and size:  # Padded up to a multiple of 16 (a depth-4 U-Net).
    padded = tuple(-(-s // 16) * 16 for s in size)
    command += (f" --config.data_resolution={resolution} "
                f"--config.image_size='({padded[0]}, {padded[1]})'")
  return command


if __name__ == "__main__":
  cli.run(main)
