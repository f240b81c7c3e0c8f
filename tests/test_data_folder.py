"""--dataset folder: the real samples in other layouts and formats, mixed sizes, predict.

Bad input and options: tests/test_data_folder_errors.py.
"""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import folder as folder_config
from tests import _data_samples
from tests.conftest import shared_data_dir
from unet_jax import data
from unet_jax.data import camvid, folder, folder_layout, prepare

Options = folder_layout.Options


def _records(builder, split, raw=False):
  skip = tfds.decode.SkipDecoding()
  source = builder.as_data_source(split, decoders={"image": skip, "mask": skip} if raw else None)
  return {source[i]["id"].decode(): source[i] for i in range(len(source))}


# --- TGS: 0/255 masks; the same records and split as --dataset tgs. ---

TGS_IDS = 40


@pytest.fixture(scope="module")
def tgs_both(tmp_path_factory):
  """(tgs builder, folder builder, folder manual_dir) over the same 40 TGS ids."""
  tgs_dir = shared_data_dir("tgs")
  root = tmp_path_factory.mktemp("tgs")
  ids = _data_samples.tgs_ids(tgs_dir, TGS_IDS)
  _, tgs_layout = _data_samples.tgs_layouts(tgs_dir, root, TGS_IDS)
  manual = _data_samples.tgs_folder(tgs_dir, root / "as_folder", ids)
  return (prepare.prepare("tgs", tgs_layout, root / "tfds_tgs"),
          prepare.prepare("folder", manual, root / "tfds_folder"), manual)


def test_tgs_as_folder_stores_the_same_bytes_and_split(tgs_both):
  by_tgs, by_folder, _ = tgs_both
  assert by_folder.info.metadata["channels"] == 1  # RGB with R == G == B: gray.
  assert by_folder.info.metadata["num_classes"] == 1
  assert by_folder.info.metadata["mask_values"] == [0, 255]
  for split in ("train", "val"):
    expected, stored = _records(by_tgs, split, raw=True), _records(by_folder, split, raw=True)
    assert sorted(expected) == sorted(stored) and expected
    for key, record in stored.items():
      assert record["image"] == expected[key]["image"]  # Gray 101x101 PNG, byte for byte.
      assert record["mask"] == expected[key]["mask"]  # 0/1 PNG.
  decoded = _records(by_folder, "train")
  assert all(r["image"].shape == (101, 101, 1) for r in decoded.values())
  assert set(np.unique(np.stack([r["mask"] for r in decoded.values()]))) == {0, 1}


def _tiny_tgs_config(dataset, data_dir):
  from configs import tgs as tgs_config  # pylint: disable=import-outside-toplevel
  config = tgs_config.get_config()
  config.dataset, config.data_dir = dataset, str(data_dir)
  config.model.features, config.model.depth = 4, 2
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = config.eval_every_steps = 4
  config.log_every_steps = 2
  config.tensorboard = False
  return config


def test_tgs_as_folder_trains_to_the_same_scores(tgs_both, tmp_path):
  """configs/tgs.py on both preparations of the same ids: equal validation scores."""
  from unet_jax import train  # pylint: disable=import-outside-toplevel
  by_tgs, by_folder, _ = tgs_both
  scores = {}
  for dataset, builder in (("tgs", by_tgs), ("folder", by_folder)):
    config = _tiny_tgs_config(dataset, builder.data_path.parents[2])
    scores[dataset] = train.train_and_evaluate(config, tmp_path / dataset)
  assert scores["tgs"] and scores["tgs"] == scores["folder"]


# --- Carvana: the JPEGs and GIF masks as shipped, split by car. ---

CARVANA_OPTIONS = Options(image_glob="train/*.jpg", mask_glob="train_masks/*.gif",
                          mask_name="{stem}_mask.gif", group_regex=r"^(.+)_\d\d$")


def test_carvana_as_shipped_equals_the_carvana_builder(tmp_path):
  _, layout = _data_samples.carvana_layouts(shared_data_dir("carvana"), tmp_path,
                                            angles=("01", "09"))
  by_carvana = prepare.prepare("carvana", layout, tmp_path / "tfds_carvana", "64x96")
  by_folder = prepare.prepare("folder", layout, tmp_path / "tfds_folder", "64x96",
                              options=CARVANA_OPTIONS)
  assert by_folder.info.metadata["channels"] == 3
  cars = {}
  for split in ("train", "val"):
    expected, stored = _records(by_carvana, split), _records(by_folder, split)
    assert sorted(expected) == sorted(stored) and stored
    cars[split] = {key.rsplit("_", 1)[0] for key in stored}
    for key, record in stored.items():
      assert record["image"].shape == (64, 96, 3)
      np.testing.assert_array_equal(record["image"], expected[key]["image"])
      np.testing.assert_array_equal(record["mask"], expected[key]["mask"])
  assert not cars["train"] & cars["val"]  # The angles of a car stay together.


# --- CamVid: a class map with void, as index, palette and colour masks; a val/ folder. ---

CAMVID_COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192), (0, 0, 0)]  # SegNet's colours of classes 0..10 and void (11).


def _write_camvid_mask(labels, path, kind):
  if kind == "colour":
    Image.fromarray(np.array(CAMVID_COLOURS, np.uint8)[labels]).save(path)
  elif kind == "palette":
    image = Image.fromarray(labels)
    image.putpalette([c for colour in CAMVID_COLOURS for c in colour])  # L -> P, same indices.
    image.save(path)
  else:
    Image.fromarray(labels).save(path)


def camvid_folder(camvid_layout, root, kind):
  """DIR/images, DIR/masks from SegNet's train; DIR/val/images, DIR/val/masks from its val."""
  for split, target in (("train", root), ("val", root / "val")):
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for image in sorted((camvid_layout / split).glob("*.png")):
      shutil.copyfile(image, target / "images" / image.name)
      labels = np.asarray(Image.open(camvid_layout / f"{split}annot" / image.name))
      _write_camvid_mask(labels, target / "masks" / image.name, kind)
  return root


def camvid_classes(kind):
  if kind == "colour":
    return ",".join(f"#{r:02x}{g:02x}{b:02x}:{i if i < camvid.VOID else 'void'}"
                    for i, (r, g, b) in enumerate(CAMVID_COLOURS))
  return ",".join(f"{i}:{i}" for i in range(camvid.VOID)) + f",{camvid.VOID}:void"


@pytest.fixture(scope="module")
def camvid_built(tmp_path_factory):
  root = tmp_path_factory.mktemp("camvid")
  layout = _data_samples.camvid_layout(shared_data_dir("camvid"), root, per_split=3)
  return layout, prepare.prepare("camvid", layout, root / "tfds")


@pytest.mark.parametrize("kind", ["index", "palette", "colour"])
def test_camvid_with_a_class_map(camvid_built, kind, tmp_path):
  layout, by_camvid = camvid_built
  manual = camvid_folder(layout, tmp_path / "manual", kind)
  by_folder = prepare.prepare("folder", manual, tmp_path / "tfds",
                              options=Options(classes=camvid_classes(kind)))
  metadata = by_folder.info.metadata
  assert (metadata["channels"], metadata["num_classes"], metadata["void"]) == (3, 11, 255)
  for split in ("train", "val"):  # From val/, not hashed.
    expected, stored = _records(by_camvid, split), _records(by_folder, split)
    assert sorted(expected) == sorted(stored) and len(stored) == 3
    for key, record in stored.items():
      np.testing.assert_array_equal(record["image"], expected[key]["image"])
      want = np.where(expected[key]["mask"] == camvid.VOID, folder.VOID, expected[key]["mask"])
      np.testing.assert_array_equal(record["mask"], want)


def test_camvid_folder_through_load_split_pads_with_void(camvid_built, tmp_path):
  layout, _ = camvid_built
  manual = camvid_folder(layout, tmp_path / "manual", "index")
  builder = prepare.prepare("folder", manual, tmp_path / "tfds",
                            options=Options(classes=camvid_classes("index")))
  command = prepare.train_command("folder", str(tmp_path / "tfds"), "native",
                                  builder.info.metadata)
  assert "--config.image_size='(368, 480)'" in command
  assert "--config.num_classes=11 --config.loss=softmax_ce" in command
  config = folder_config.get_config()
  config.data_dir, config.image_size, config.num_classes = str(tmp_path / "tfds"), (368, 480), 11
  element = data.load_split(config, "val")[0]
  assert element["image"].shape == (368, 480, 3) and element["mask"].shape == (368, 480)
  assert (element["mask"][:4] == folder.VOID).all() and (element["mask"][-4:] == folder.VOID).all()


# --- Mixed sizes and formats. ---

FORMATS = [  # (image suffix, mask suffix, mask values), one TGS pair each, cropped differently.
    (".png", ".png", "16bit"), (".tif", ".tiff", "0/255"), (".bmp", ".bmp", "0/1"),
    (".gif", ".gif", "palette"), (".jpg", ".png", "0/1"), (".png", ".tif", "16bit")]
CROPS = [(101, 101), (64, 80), (50, 90), (101, 33), (77, 61), (90, 101)]  # (height, width).


def _write_mask(mask, path, values):
  if values == "16bit":
    Image.fromarray(mask.astype(np.uint16) * np.uint16(65535)).save(path)
  elif values == "palette":
    image = Image.fromarray(mask)
    image.putpalette([0, 0, 0, 255, 0, 0])  # L -> P: index 1 is red.
    image.save(path)
  else:
    Image.fromarray(mask * np.uint8(255 if values == "0/255" else 1)).save(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """A folder of 6 TGS pairs cropped to 6 sizes in 6 format combinations, and the truth."""
  tgs_dir = shared_data_dir("tgs")
  root = tmp_path_factory.mktemp("mixed")
  truth = {}
  ids = [i for i in _data_samples.tgs_ids(tgs_dir, 40)
         if np.asarray(Image.open(tgs_dir / "train" / "masks" / f"{i}.png")).any()][:len(CROPS)]
  for key, (height, width), (image_suffix, mask_suffix, values) in zip(ids, CROPS, FORMATS):
    image = np.asarray(Image.open(tgs_dir / "train" / "images" / f"{key}.png"))[:height, :width, 0]
    mask = (np.asarray(Image.open(tgs_dir / "train" / "masks" / f"{key}.png")) > 0)[:height, :width]
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{key}{image_suffix}")
    _write_mask(mask.astype(np.uint8), root / "masks" / f"{key}{mask_suffix}", values)
    truth[key] = (image, mask.astype(np.uint8), image_suffix == ".jpg")
  return root, truth


def test_mixed_sizes_and_formats_native(mixed, tmp_path):
  manual, truth = mixed
  builder = prepare.prepare("folder", manual, tmp_path / "tfds")
  metadata = builder.info.metadata
  assert metadata["channels"] == 1
  assert (metadata["min_size"], metadata["max_size"]) == ([50, 33], [101, 101])
  stored = {**_records(builder, "train"), **_records(builder, "val")}
  assert sorted(stored) == sorted(truth)
  for key, (image, mask, lossy) in truth.items():
    np.testing.assert_array_equal(stored[key]["mask"][..., 0], mask, err_msg=key)
    if lossy:  # JPEG: kept as shipped.
      assert stored[key]["image"].shape[:2] == image.shape
    else:
      np.testing.assert_array_equal(stored[key]["image"][..., 0], image, err_msg=key)
  command = prepare.train_command("folder", "D", "native", metadata)
  assert command.endswith("--config.data_dir=D --config.image_size='(112, 112)'")
  config = folder_config.get_config()
  config.data_dir, config.image_size = str(tmp_path / "tfds"), (112, 112)
  source = data.load_split(config, "train")
  records = builder.as_data_source("train")
  for i in range(len(source)):
    element, (height, width) = source[i], records[i]["mask"].shape[:2]
    assert element["image"].shape == element["mask"].shape == (112, 112)
    padding = np.ones((112, 112), bool)
    top, left = (112 - height) // 2, (112 - width) // 2
    padding[top:top + height, left:left + width] = False
    assert (element["mask"][padding] == folder.VOID).all()
    assert set(np.unique(element["mask"][~padding])) <= {0, 1}


def test_mixed_sizes_resized(mixed, tmp_path):
  manual, truth = mixed
  builder = prepare.prepare("folder", manual, tmp_path / "tfds", resolution="48x40")
  stored = {**_records(builder, "train"), **_records(builder, "val")}
  assert len(stored) == len(truth)
  for record in stored.values():
    assert record["image"].shape == (48, 40, 1) and record["mask"].shape == (48, 40, 1)
    assert set(np.unique(record["mask"])) <= {0, 1}
  command = prepare.train_command("folder", "D", "48x40", builder.info.metadata)
  assert "--config.data_resolution=48x40 --config.image_size='(48, 48)'" in command


def test_predictions_come_back_at_each_images_own_size(mixed, tmp_path):
  """A run trained on the mixed folder predicts masks of each input's size: padded ones
  cropped back, larger ones resized back; a 16-bit image as its 8-bit twin."""
  from unet_jax import predict, train  # pylint: disable=import-outside-toplevel
  manual, truth = mixed
  prepare.prepare("folder", manual, tmp_path / "tfds")
  config = folder_config.get_config()
  config.data_dir, config.image_size = str(tmp_path / "tfds"), (112, 112)
  config.model.features, config.model.depth = 4, 2
  config.batch_size = config.eval_batch_size = 4
  config.num_train_steps = config.eval_every_steps = config.log_every_steps = 2
  config.tensorboard = False
  train.train_and_evaluate(config, tmp_path / "run")
  inputs = shutil.copytree(manual / "images", tmp_path / "inputs")
  image = next(image for image, _, lossy in truth.values() if not lossy)
  Image.fromarray(np.tile(image, (2, 2))).save(inputs / "large.png")  # > image_size: resized.
  Image.fromarray(image.astype(np.uint16) * np.uint16(257)).save(inputs / "deep.png")
  Image.fromarray(image).save(inputs / "shallow.png")
  predict.predict(tmp_path / "run", inputs, tmp_path / "masks")
  for path in inputs.iterdir():
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}.png"))
    assert mask.shape == Image.open(path).size[::-1], path.name
    assert set(np.unique(mask)) <= {0, 255}
  deep, shallow = (predict.read_image(predict.InputImage(p.name, p.read_bytes), 1)
                   for p in (inputs / "deep.png", inputs / "shallow.png"))
  np.testing.assert_array_equal(deep, shallow)  # Scaled as prepare scales it, not clipped.


def test_lossy_jpeg_masks_keep_their_brighter_half(tgs_dir, tmp_path):
  key = next(i for i in _data_samples.tgs_ids(tgs_dir, 40)
             if np.asarray(Image.open(tgs_dir / "train" / "masks" / f"{i}.png")).any())
  truth = np.asarray(Image.open(tgs_dir / "train" / "masks" / f"{key}.png")) > 0
  Image.fromarray(truth.astype(np.uint8) * np.uint8(255)).save(tmp_path / "m.jpg", quality=75)
  jpeg = Image.open(tmp_path / "m.jpg")
  labels, found = folder.mask_labels(jpeg, "m.jpg", None)
  assert len(found) > 2  # Ringing: values a binary PNG never has.
  assert (labels == truth).mean() > 0.99 > ((np.asarray(jpeg) > 0) == truth).mean()


def test_channels_rule(tmp_path):
  gray = np.full((4, 4), 7, np.uint8)
  colour = np.stack([gray, gray, gray + 1], -1)
  paths = []
  for name, array in (("a", np.stack([gray] * 3, -1)), ("b", gray), ("c", colour)):
    paths.append(tmp_path / f"{name}.png")
    Image.fromarray(array).save(paths[-1])
  members = [(p.stem, folder_layout.Member(str(p)), None) for p in paths]
  assert folder.scan_channels(members[:2]) == 1  # R == G == B counts as gray.
  assert folder.scan_channels(members) == 3
