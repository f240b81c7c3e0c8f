"""Carvana from its Kaggle download: GIF masks, split by car, resized cache, zip and folders."""

import csv
import shutil

import numpy as np
import pytest

from configs import carvana as carvana_config
from tests import _data_samples
from tests.conftest import shared_data_dir
from unet_jax import data
from unet_jax.data import carvana, prepare
from unet_jax.errors import MissingDataError, UserError
from unet_jax.rle import encode as rle_encode


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
  return _data_samples.carvana_layouts(shared_data_dir("carvana"),
                                       tmp_path_factory.mktemp("carvana_downloads"))


@pytest.fixture(scope="module")
def native_from_zip(layouts, tmp_path_factory):
  return prepare.prepare("carvana", layouts[0], tmp_path_factory.mktemp("tfds_native"))


def _records(builder, split):
  source = builder.as_data_source(split)
  return {source[i]["id"].decode(): source[i] for i in range(len(source))}


def test_native_zip_build_decodes_gif_masks_like_the_reference_rle(native_from_zip):
  with open(shared_data_dir("carvana") / "train_masks_rle_computed.csv", newline="",
            encoding="utf-8") as f:
    expected = {row["img"]: row["rle_mask"] for row in csv.DictReader(f)}
  records = {**_records(native_from_zip, "train"), **_records(native_from_zip, "val")}
  assert len(records) == 9  # 3 cars x 3 angles.
  for key, record in records.items():
    assert record["image"].shape == (1280, 1918, 3) and record["image"].dtype == np.uint8
    assert record["mask"].shape == (1280, 1918, 1) and record["mask"].dtype == np.uint8
    assert set(np.unique(record["mask"])) == {0, 1}
    assert rle_encode(record["mask"][..., 0], "C") == expected[f"{key}.jpg"]


def test_native_keeps_the_jpegs_as_shipped(native_from_zip, layouts):
  source = native_from_zip.as_data_source("train", decoders={"image": _skip()})
  record = source[0]
  shipped = (layouts[1] / "train" / f"{record['id'].decode()}.jpg").read_bytes()
  assert record["image"] == shipped


def _skip():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.decode.SkipDecoding()


def test_split_is_by_car(native_from_zip):
  train_cars = {carvana.car_id(k) for k in _records(native_from_zip, "train")}
  val_cars = {carvana.car_id(k) for k in _records(native_from_zip, "val")}
  assert train_cars and val_cars and not train_cars & val_cars
  assert len(train_cars | val_cars) == 3


@pytest.fixture(scope="module")
def resized_data_dir(layouts, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_resized")
  prepare.prepare("carvana", layouts[1], data_dir, resolution="64x96")
  return data_dir


def test_resized_folder_build_through_load_split(resized_data_dir, native_from_zip):
  config = carvana_config.get_config()
  config.image_size = (64, 96)
  config.data_dir = str(resized_data_dir)
  for split in ("train", "val"):
    source = data.load_split(config, split)
    assert len(source) == native_from_zip.info.splits[split].num_examples
    for i in range(len(source)):
      element = source[i]
      assert set(element) == {"image", "mask"}
      assert element["image"].shape == (64, 96, 3) and element["image"].dtype == np.uint8
      assert element["mask"].shape == (64, 96) and element["mask"].dtype == np.uint8
      assert set(np.unique(element["mask"])) == {0, 1}
      car = element["mask"].mean()
      assert 0.05 < car < 0.6  # A car, not an inverted palette.


def test_wrong_resolution_says_the_prepare_command(resized_data_dir):
  config = carvana_config.get_config()  # 256x384, not prepared here.
  config.data_dir = str(resized_data_dir)
  with pytest.raises(MissingDataError) as excinfo:
    data.load_split(config, "train")
  assert "--dataset carvana" in str(excinfo.value)
  assert "--resolution 256x384" in str(excinfo.value)


def test_masks_zip_missing(layouts, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copyfile(layouts[0] / "train.zip", manual / "train.zip")
  with pytest.raises(MissingDataError, match="train_masks.zip"):
    prepare.prepare("carvana", manual, tmp_path / "tfds")


def test_mask_that_is_not_a_palette_gif(layouts, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  manual = shutil.copytree(layouts[1], tmp_path / "manual")
  victim = sorted((manual / "train_masks").glob("*.gif"))[0]
  Image.new("RGB", (1918, 1280)).save(victim, format="GIF")
  Image.open(victim).convert("L").save(victim, format="PNG")  # Same name, wrong content.
  with pytest.raises(UserError) as excinfo:
    prepare.prepare("carvana", manual, tmp_path / "tfds", resolution="32x48")
  assert str(victim) in str(excinfo.value) and "\n" not in str(excinfo.value)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
