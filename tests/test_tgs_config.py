"""configs/tgs.py and configs/tgs.py:small, loaded as `--config` loads them."""

import pathlib

from absl import flags
from ml_collections import config_flags
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TGS = REPO / "configs" / "tgs.py"


def _load(suffix: str = "", *overrides: str):
  flag_values = flags.FlagValues()
  argv = ["test", f"--config={TGS}{suffix}", *overrides]
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_dropout_takes_one_rate_or_one_per_level_on_the_command_line():
  assert _load("", "--config.model.dropout=0.2").model.dropout == 0.2
  per_level = _load("", "--config.model.dropout=(0,0,0.1,0.1,0.1)").model.dropout
  assert per_level == (0, 0, 0.1, 0.1, 0.1)


def test_the_full_download_default_trains_without_rotations_or_dropout():
  config = _load()
  assert config.model.dropout == 0.0
  assert config.augment.rotation_degrees == 0.0
  assert (config.augment.scale, config.augment.brightness) == (0.1, 0.05)


def test_small_differs_from_the_default_only_in_its_regularisation_and_input_size():
  full, small = _load(), _load(":small")
  assert (small.augment.rotation_degrees, small.augment.scale, small.augment.brightness,
          small.model.dropout) == (10.0, 0.2, 0.1, 0.1)
  small.augment.update({key: full.augment[key] for key in ("rotation_degrees", "scale",
                                                           "brightness")})
  small.model.dropout = full.model.dropout
  assert (tuple(small.image_size), tuple(full.image_size)) == ((128, 128), (101, 101))
  small.image_size = full.image_size
  assert small.to_dict() == full.to_dict()


def test_an_unknown_variant_names_the_two_that_exist():
  with pytest.raises(flags.IllegalFlagValueError, match="configs/tgs.py:small"):
    _load(":tiny")


def test_the_docstring_gives_both_commands():
  doc = " ".join(TGS.read_text().split('"""')[1].replace("\\\n", "").split())
  assert "--config configs/tgs.py --workdir" in doc
  assert "--config configs/tgs.py:small --workdir" in doc
