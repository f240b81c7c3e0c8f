"""Datasets: each maps a config to random-access train/val sources of {image, mask} dicts.

Real datasets are read from `config.data_dir`, where `python -m unet_jax.data.prepare` built
them from the original downloads (see unet_jax/data/sources.py).
"""

from unet_jax.data import synthetic
from unet_jax.errors import ConfigError

SPLITS = ("train", "val", "holdout")


def load_split(config, split: str):
  """The random-access source for `split` of `config.dataset`: 'train', 'val', or 'holdout' (the
  prepared val split kept out of every fold, config.fold_holdout)."""
  if split not in SPLITS:
    raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
  if config.dataset == "synthetic":
    if split == "holdout":
      raise ConfigError("split 'holdout' needs a prepared dataset with --config.num_folds=K "
                        "--config.fold_holdout=True; the synthetic one has train and val")
    size = config.synthetic.num_train if split == "train" else config.synthetic.num_val
    # Train and val come from different seeds, so they never share an image.
    seed = config.seed * 2 + (0 if split == "train" else 1)
    return synthetic.SyntheticShapes(size, tuple(config.image_size), seed,
                                     multiclass=config.synthetic.multiclass)
  if config.dataset in ("tgs", "carvana", "camvid", "folder"):
    from unet_jax.data import sources  # pylint: disable=import-outside-toplevel  # Imports TFDS.
    return sources.load_prepared(config, split)
  raise ConfigError(f"unknown dataset {config.dataset!r}; choose synthetic, tgs, carvana, camvid "
                    "or folder")
