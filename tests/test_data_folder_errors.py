"""--dataset folder: the class map syntax, reuse of a prepared folder, and every bad input
(one line naming the file and the fix, exit status 2 through the CLI, nothing prepared)."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import _data_samples
from tests.conftest import REPO, shared_data_dir
from unet_jax.data import folder, folder_layout, prepare
from unet_jax.data.downloads import BadDataError
from unet_jax.errors import ConfigError, MissingDataError, UserError

Options = folder_layout.Options


def _assert_one_line(excinfo, *needles):
  message = str(excinfo.value)
  assert "\n" not in message
  for needle in needles:
    assert str(needle) in message, message


def _assert_nothing_prepared(data_dir):
  assert not [p for p in data_dir.rglob("*") if p.is_file()], list(data_dir.rglob("*"))


# --- Options: the class map syntax; reuse only with the same options. ---

def test_parse_classes():
  values = folder.parse_classes("0:0, 128:1,255:void")
  assert values.classes == {0: 0, 128: 1, 255: folder.VOID} and not values.colours
  assert values.num_classes == 1  # Ids within {0, 1}: binary with void.
  colours = folder.parse_classes("#000000:0,#800000:1,#00ff00:2")
  assert colours.colours and colours.classes[0x800000] == 1 and colours.num_classes == 3
  assert folder.parse_classes("") is None
  for bad in ("0=1", "0:0,0:1", "0:0,#000000:1", "#12:1", "1:300", "x:1"):
    with pytest.raises(ConfigError) as excinfo:
      folder.parse_classes(bad)
    _assert_one_line(excinfo, "--classes")


@pytest.fixture
def small(tmp_path):
  """12 TGS pairs as a folder (0/255 masks), to break."""
  tgs_dir = shared_data_dir("tgs")
  ids = _data_samples.tgs_ids(tgs_dir, 12)
  return _data_samples.tgs_folder(tgs_dir, tmp_path / "manual", ids)


def test_changed_options_refuse_to_reuse_until_overwrite(small, tmp_path):
  prepare.prepare("folder", small, tmp_path / "tfds")
  with pytest.raises(ConfigError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds", options=Options(val_fraction=0.5))
  _assert_one_line(excinfo, "val_fraction 0.2 (now 0.5)", "--overwrite")
  builder = prepare.prepare("folder", small, tmp_path / "tfds", overwrite=True,
                            options=Options(val_fraction=0.5))
  assert builder.info.splits["val"].num_examples == 6
  assert builder.info.metadata["options"]["val_fraction"] == 0.5


# --- Bad input: one line naming the file and the fix; nothing prepared. ---

def test_images_and_masks_without_partner(small, tmp_path):
  masks = sorted((small / "masks").glob("*.png"))
  for victim in masks[:2]:
    victim.unlink()
  shutil.copyfile(masks[5], small / "masks" / "orphan.png")
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds")
  _assert_one_line(excinfo, "2 of 12 images have no mask", f"images/{masks[0].name}",
                   "1 of 11 masks have no image", "orphan.png", "--mask_name")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_mask_of_another_size(small, tmp_path):
  victim = sorted((small / "masks").glob("*.png"))[-1]
  Image.new("L", (100, 101)).save(victim)
  with pytest.raises(BadDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds")
  _assert_one_line(excinfo, victim, "100x101", "101x101", "at its image's size")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_mask_values_outside_the_classes(small, tmp_path):
  victim = sorted((small / "masks").glob("*.png"))[-1]
  mask = np.asarray(Image.open(victim)).copy()
  mask[:2, :2], mask[5, 5] = 7, 9
  Image.fromarray(mask).save(victim)
  with pytest.raises(BadDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds", options=Options(classes="0:0,255:1"))
  _assert_one_line(excinfo, victim, "values 7, 9", "maps 0, 255")
  _assert_nothing_prepared(tmp_path / "tfds")


@pytest.mark.parametrize("kind", ["images", "masks"])
def test_unreadable_file(small, kind, tmp_path):
  victim = sorted((small / kind).glob("*.png"))[-1]  # Masks fail late, inside the build.
  victim.write_bytes(victim.read_bytes()[:100])
  with pytest.raises(BadDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds")
  _assert_one_line(excinfo, victim, "corrupt", "delete it")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_empty_or_missing_folders(small, tmp_path):
  shutil.rmtree(small / "masks")
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds")
  _assert_one_line(excinfo, small / "masks", "12 images", "--mask_glob")
  shutil.rmtree(small / "images")
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("folder", small, tmp_path / "tfds")
  _assert_one_line(excinfo, small / "images", "--image_glob")
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("folder", tmp_path / "nowhere", tmp_path / "tfds")
  _assert_one_line(excinfo, "nowhere")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_option_errors(small, tmp_path):
  cases = [(Options(mask_name="mask.png"), "{stem}"), (Options(val_fraction=1.0), "(0, 1)"),
           (Options(group_regex=r"^(\d+)_x$"), "does not match id"),
           (Options(group_regex="(["), "not a regex")]
  for options, needle in cases:
    with pytest.raises(UserError) as excinfo:
      prepare.prepare("folder", small, tmp_path / "tfds", options=options)
    _assert_one_line(excinfo, needle)
  _assert_nothing_prepared(tmp_path / "tfds")


def _prepare_cli(*args):
  return subprocess.run([sys.executable, "-m", "unet_jax.data.prepare", "--dataset", "folder",
                         *map(str, args)], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)


def test_cli_prints_the_training_command_and_fails_in_one_line(small, tmp_path):
  proc = _prepare_cli("--manual_dir", small, "--data_dir", tmp_path / "tfds")
  assert proc.returncode == 0, proc.stderr
  assert ("train with: python -m unet_jax.main --config configs/folder.py --workdir runs/folder "
          f"--config.data_dir={tmp_path / 'tfds'} --config.image_size='(112, 112)'"
          in proc.stderr)
  (small / "images" / "extra.png").write_bytes((small / "images").glob("*.png").__next__()
                                               .read_bytes())
  proc = _prepare_cli("--manual_dir", small, "--data_dir", tmp_path / "tfds2")
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: 1 of 13 images have no mask") and "extra.png" in lines[-1]
  assert "Traceback" not in proc.stderr
  _assert_nothing_prepared(tmp_path / "tfds2")
