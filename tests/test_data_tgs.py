"""TGS Salt from its Kaggle download: zip and folder builds, split, masks vs Kaggle's RLE."""

import csv
import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tgs as tgs_config
from tests import _data_samples
from tests.conftest import REPO, shared_data_dir
from unet_jax import data
from unet_jax.data import downloads, prepare, sources
from unet_jax.errors import MissingDataError, UserError
from unet_jax.rle import encode as rle_encode


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  tgs_dir = shared_data_dir("tgs")
  return _data_samples.tgs_layouts(tgs_dir, tmp_path_factory.mktemp("tgs_downloads"))


@pytest.fixture(scope="module")
def built_from_zip(layouts, tmp_path_factory):
  return prepare.prepare("tgs", layouts[0], tmp_path_factory.mktemp("tfds_zip"))


def _records(builder, split):
  source = builder.as_data_source(split)
  return {source[i]["id"].decode(): source[i] for i in range(len(source))}


def test_no_tensorflow_in_this_environment(built_from_zip):
  assert importlib.util.find_spec("tensorflow") is None
  assert "tensorflow" not in sys.modules
  assert built_from_zip.info.file_format.value == "array_record"


def test_zip_build_counts_dtypes_values_and_shapes(built_from_zip, tgs_dir):
  splits = built_from_zip.info.splits
  assert splits["train"].num_examples + splits["val"].num_examples == 50
  assert splits["val"].num_examples == 10  # 20% of the ids.
  depths = downloads.read_csv_column(tgs_dir, "depths.csv", "id", "z")
  for split in ("train", "val"):
    for key, record in _records(built_from_zip, split).items():
      assert record["image"].shape == (101, 101, 1) and record["image"].dtype == np.uint8
      assert record["mask"].shape == (101, 101, 1) and record["mask"].dtype == np.uint8
      assert set(np.unique(record["mask"])) <= {0, 1}
      assert record["depth"] == pytest.approx(float(depths[key]))


def test_folder_build_equals_zip_build(built_from_zip, layouts, tmp_path):
  from_folders = prepare.prepare("tgs", layouts[1], tmp_path)
  for split in ("train", "val"):
    zipped, folders = _records(built_from_zip, split), _records(from_folders, split)
    assert sorted(zipped) == sorted(folders)
    for key in zipped:
      np.testing.assert_array_equal(zipped[key]["image"], folders[key]["image"])
      np.testing.assert_array_equal(zipped[key]["mask"], folders[key]["mask"])


def test_split_is_by_id_and_deterministic(built_from_zip):
  train, val = _records(built_from_zip, "train"), _records(built_from_zip, "val")
  assert not set(train) & set(val)
  from unet_jax.data import builders  # pylint: disable=import-outside-toplevel
  assert set(val) == builders.hash_split(list(train) + list(val))


@pytest.fixture(scope="module")
def full_data_dir(tmp_path_factory):
  tgs_dir = shared_data_dir("tgs")
  data_dir = tmp_path_factory.mktemp("tfds_full")
  prepare.prepare("tgs", tgs_dir, data_dir)
  return data_dir


@pytest.mark.parametrize("image_size", [(101, 101), (128, 128)], ids=["shipped", "padded"])
def test_every_mask_reencodes_to_kaggles_rle(full_data_dir, tgs_dir, image_size):
  """Decoded through load_split (as shipped, or padded to 128) and cropped back, each mask is
  Kaggle's RLE."""
  with open(tgs_dir / "train.csv", newline="", encoding="utf-8") as f:
    expected = {row["id"]: row["rle_mask"] for row in csv.DictReader(f)}
  config = tgs_config.get_config()
  config.data_dir = str(full_data_dir)
  config.image_size = image_size
  seen = {}
  for split in ("train", "val"):
    source = data.load_split(config, split)
    ids = source.data_source  # Same indices, stored ids.
    for i in range(len(source)):
      element = source[i]
      assert element["image"].shape == element["mask"].shape == image_size
      assert element["image"].dtype == element["mask"].dtype == np.uint8
      assert isinstance(element["depth"], np.float32)
      key = ids[i]["id"].decode()
      seen[key] = rle_encode(sources.crop_to(element["mask"], (101, 101)), "F")
  assert len(seen) == len(expected) == 1000
  mismatched = [k for k in expected if seen[k] != expected[k]]
  assert not mismatched, f"{len(mismatched)} masks differ from train.csv, e.g. {mismatched[:3]}"
  assert sum(1 for v in expected.values() if not v) > 300  # Empty masks are covered too.


def _assert_one_line_error(excinfo, *needles):
  message = str(excinfo.value)
  assert "\n" not in message
  for needle in needles:
    assert needle in message, message


def _assert_nothing_prepared(data_dir):
  leftovers = [p for p in data_dir.rglob("*") if p.name == "dataset_info.json"]
  assert not leftovers and not list(data_dir.rglob("*.array_record*"))


def test_missing_manual_dir(tmp_path):
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("tgs", tmp_path / "nowhere", tmp_path / "tfds")
  _assert_one_line_error(excinfo, "nowhere", "download")


def test_zip_without_the_expected_members(layouts, tmp_path):
  manual = tmp_path / "manual"
  _data_samples.write_zip(manual / "train.zip", ["train.csv"], layouts[0])
  shutil.copyfile(layouts[0] / "depths.csv", manual / "depths.csv")
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("tgs", manual, tmp_path / "tfds")
  _assert_one_line_error(excinfo, "train.zip", "images/<id>.png", "download")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_image_without_its_mask(layouts, tmp_path):
  manual = shutil.copytree(layouts[1], tmp_path / "manual")
  victim = sorted((manual / "train" / "masks").glob("*.png"))[3]
  victim.unlink()
  with pytest.raises(MissingDataError) as excinfo:
    prepare.prepare("tgs", manual, tmp_path / "tfds")
  _assert_one_line_error(excinfo, f"images/{victim.name}", "has no mask")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_corrupt_image_leaves_no_complete_build(layouts, tmp_path):
  manual = shutil.copytree(layouts[1], tmp_path / "manual")
  victim = sorted((manual / "train" / "images").glob("*.png"))[-1]  # Fails late in the build.
  victim.write_bytes(victim.read_bytes()[:200])
  with pytest.raises(UserError) as excinfo:
    prepare.prepare("tgs", manual, tmp_path / "tfds")
  _assert_one_line_error(excinfo, str(victim), "corrupt")
  _assert_nothing_prepared(tmp_path / "tfds")
  config = tgs_config.get_config()
  config.data_dir = str(tmp_path / "tfds")
  with pytest.raises(MissingDataError, match="python -m unet_jax.data.prepare --dataset tgs"):
    data.load_split(config, "train")


def test_mask_of_another_size(layouts, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  manual = shutil.copytree(layouts[1], tmp_path / "manual")
  victim = sorted((manual / "train" / "masks").glob("*.png"))[5]
  Image.new("L", (100, 101)).save(victim)
  with pytest.raises(UserError) as excinfo:
    prepare.prepare("tgs", manual, tmp_path / "tfds")
  _assert_one_line_error(excinfo, str(victim), "100x101", "101x101")
  _assert_nothing_prepared(tmp_path / "tfds")


def test_cli_reports_one_line_and_exits_nonzero(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "unet_jax.data.prepare", "--dataset", "tgs",
       "--manual_dir", str(tmp_path / "missing"), "--data_dir", str(tmp_path / "tfds")],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: tgs: manual_dir") and "missing" in last
  assert "Traceback" not in proc.stderr


def test_split_decoded_into_memory_equals_decoding_each_read(full_data_dir):
  config = tgs_config.get_config()
  config.data_dir = str(full_data_dir)
  cached = data.load_split(config, "val")  # 200 x 2 x 101 x 101 bytes: within the budget.
  config.cache_decoded_mb = 0
  decoded = data.load_split(config, "val")
  assert isinstance(cached, sources.InMemorySource)
  assert isinstance(decoded, sources.PreparedSource)
  assert len(cached) == len(decoded) == 200
  for i in range(len(decoded)):
    a, b = cached[i], decoded[i]
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
