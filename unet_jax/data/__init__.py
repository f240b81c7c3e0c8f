"""Datasets: each maps a config to random-access train/val sources of {image, mask} dicts."""

from unet_jax.data import synthetic
from unet_jax.errors import ConfigError, MissingDataError


_DOWNLOADS = {
    "tgs": "the Kaggle 'tgs-salt-identification-challenge' files (train.zip, train.csv, depths.csv)",
    "carvana": "the Kaggle 'carvana-image-masking-challenge' files (train.zip, train_masks.zip)",
    "camvid": "CamVid in the SegNet layout (train/, trainannot/, val/, valannot/)",
}


def _real_dataset(config, split: str):
  del split  # The TFDS builders for the real downloads plug in here.
  raise MissingDataError(
      f"dataset {config.dataset!r} needs {_DOWNLOADS[config.dataset]}: put them in "
      f"~/Downloads/{config.dataset}; reading them is not implemented yet in this version")


def load_split(config, split: str):
  """The random-access source for `split` ('train' or 'val') of `config.dataset`."""
  if config.dataset == "synthetic":
    size = config.synthetic.num_train if split == "train" else config.synthetic.num_val
    # Train and val come from different seeds, so they never share an image.
    seed = config.seed * 2 + (0 if split == "train" else 1)
    return synthetic.SyntheticShapes(size, tuple(config.image_size), seed,
                                     multiclass=config.synthetic.multiclass)
  if config.dataset in ("tgs", "carvana", "camvid"):
    return _real_dataset(config, split)
  raise ConfigError(f"unknown dataset {config.dataset!r}; choose synthetic, tgs, carvana or camvid")
