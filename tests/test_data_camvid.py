"""CamVid (SegNet layout): labels 0..10 + void 11, padding with void, resized labels."""

import numpy as np
import pytest
from PIL import Image

from configs import camvid as camvid_config
from tests import _data_samples
from tests.conftest import shared_data_dir
from unet_jax import data
from unet_jax.data import camvid, prepare
from unet_jax.errors import UserError


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  return _data_samples.camvid_layout(shared_data_dir("camvid"),
                                     tmp_path_factory.mktemp("camvid_download"))


@pytest.fixture(scope="module")
def data_dir(manual_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare("camvid", manual_dir, data_dir)
  return data_dir


def test_native_build_matches_the_label_pngs(data_dir, manual_dir):
  builder = prepare.prepare("camvid", manual_dir, data_dir)  # Reuses the prepared data.
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 4, "val": 4}
  source = builder.as_data_source("val")
  for i in range(len(source)):
    record = source[i]
    name = record["id"].decode()
    assert record["image"].shape == (360, 480, 3) and record["image"].dtype == np.uint8
    labels = np.asarray(Image.open(manual_dir / "valannot" / f"{name}.png"))
    np.testing.assert_array_equal(record["mask"][..., 0], labels)
    assert record["mask"].max() <= camvid.VOID


def test_load_split_pads_with_void(data_dir):
  config = camvid_config.get_config()
  config.data_dir = str(data_dir)
  assert config.ignore_index == camvid.VOID and config.num_classes == len(camvid.CLASSES)
  source = data.load_split(config, "train")
  element = source[0]
  assert element["image"].shape == (368, 480, 3) and element["mask"].shape == (368, 480)
  assert (element["mask"][:4] == camvid.VOID).all() and (element["mask"][-4:] == camvid.VOID).all()
  assert set(np.unique(element["mask"][4:-4])) <= set(range(12))


def test_resized_labels_are_never_invented(manual_dir, tmp_path):
  builder = prepare.prepare("camvid", manual_dir, tmp_path, resolution="180x240")
  source = builder.as_data_source("train")
  for i in range(len(source)):
    record = source[i]
    labels = np.asarray(Image.open(manual_dir / "trainannot" / f"{record['id'].decode()}.png"))
    assert record["mask"].shape == (180, 240, 1)
    assert set(np.unique(record["mask"])) <= set(np.unique(labels))


def test_label_out_of_range_names_the_file(manual_dir, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  manual = shutil.copytree(manual_dir, tmp_path / "manual")
  victim = sorted((manual / "valannot").glob("*.png"))[0]
  labels = np.asarray(Image.open(victim)).copy()
  labels[0, 0] = 255
  Image.fromarray(labels).save(victim)
  with pytest.raises(UserError) as excinfo:
    prepare.prepare("camvid", manual, tmp_path / "tfds")
  assert str(victim) in str(excinfo.value) and "255" in str(excinfo.value)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


@pytest.mark.parametrize("shape", [(101, 101), (101, 101, 3), (360, 480, 3)])
@pytest.mark.parametrize("value", [None, camvid.VOID])
def test_pad_to_is_numpys_centred_pad_and_crop_to_undoes_it(shape, value):
  from unet_jax.data import sources  # pylint: disable=import-outside-toplevel
  array = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
  size = (128, 128) if shape[0] == 101 else (368, 480)
  extra = [size[0] - shape[0], size[1] - shape[1]]
  pads = [(e // 2, e - e // 2) for e in extra] + [(0, 0)] * (len(shape) - 2)
  want = (np.pad(array, pads, mode="reflect") if value is None
          else np.pad(array, pads, constant_values=value))
  padded = sources.pad_to(array, size, value)
  np.testing.assert_array_equal(padded, want)
  np.testing.assert_array_equal(sources.crop_to(padded, shape[:2]), array)
