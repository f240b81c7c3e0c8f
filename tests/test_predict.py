"""predict: Kaggle CSVs for the TGS and Carvana samples, TTA, odd sizes, bad inputs."""

import subprocess
import sys
import zipfile

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from tests._trained_run import trained_workdir
from tests.conftest import tiny_config
from unet_jax import checkpoints, inference, models, predict, rle, steps
from unet_jax.errors import ConfigError, MissingDataError


def validate_submission(path, fmt, expected_sizes: dict, mask_dir):
  """Every row decodes to its image's (height, width) and equals the mask PNG written."""
  header, rows = rle.read_submission(path)
  assert header == rle.HEADERS[fmt]
  assert [row_id for row_id, _ in rows] == sorted(expected_sizes)
  for row_id, encoded in rows:
    mask = rle.decode(encoded, expected_sizes[row_id], fmt)
    stem = row_id.rsplit(".", 1)[0] if fmt == "carvana" else row_id
    png = np.asarray(Image.open(mask_dir / f"{stem}.png"))
    np.testing.assert_array_equal(mask * 255, png, err_msg=row_id)
  return rows


@pytest.fixture(scope="module")
def model():
  return inference.load(trained_workdir())


def test_tgs_sample_folder_to_submission(tgs_dir, tmp_path):
  images = tgs_dir / "train" / "images"
  submission = tmp_path / "submission.csv"
  options = predict.Options(tta="flip", batch_size=64, submission=str(submission), format="tgs")
  summary = predict.predict(trained_workdir(), images, tmp_path / "masks", options)
  ids = {p.stem: (101, 101) for p in images.glob("*.png")}
  assert summary["predicted"] == len(ids) == 1000 and not summary["skipped"]
  rows = validate_submission(submission, "tgs", ids, tmp_path / "masks")
  assert len(rows) == 1000


def test_carvana_sample_jpegs_to_full_size_submission(carvana_dir, tmp_path):
  submission = tmp_path / "submission.csv"
  options = predict.Options(submission=str(submission), format="carvana")
  predict.predict(trained_workdir(), carvana_dir / "train", tmp_path / "masks", options)
  names = {p.name: (1280, 1918) for p in (carvana_dir / "train").glob("*.jpg")}
  assert len(validate_submission(submission, "carvana", names, tmp_path / "masks")) == 48


def test_flip_tta_is_the_mean_of_the_two_passes(model):
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
  plain = inference.make_predict_fn("none")
  tta = inference.make_predict_fn("flip")(model.state, images)
  mirrored = plain(model.state, images[:, :, ::-1])[:, :, ::-1]
  np.testing.assert_allclose(tta, (plain(model.state, images) + mirrored) / 2, atol=1e-6)
  assert not np.allclose(tta, plain(model.state, images), atol=1e-6)


def test_min_area_empties_masks_smaller_than_it(model):
  size = tuple(model.image_size)
  probabilities = np.zeros((*size, 1), np.float32)
  probabilities[:3, :3] = 0.9  # A 9-pixel mask.
  assert model.config.min_area == 0  # The run's default: None below keeps the mask.
  for min_area, pixels in [(None, 9), (0, 9), (9, 9), (10, 0)]:
    options = predict.Options(min_area=min_area, fit="pad")
    mask = predict._to_mask(probabilities, size, model, options)  # pylint: disable=protected-access
    assert mask.sum() == pixels, min_area


def test_odd_sizes_zip_input_and_one_compile(model, tmp_path):
  rng = np.random.default_rng(1)
  sizes = {"a": (17, 23), "b": (101, 101), "c": (5, 9), "d": (16, 16), "e": (33, 7)}
  archive = tmp_path / "images.zip"
  with zipfile.ZipFile(archive, "w") as z:
    for name, size in sizes.items():
      path = tmp_path / f"{name}.png"
      Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(path)
      z.write(path, f"nested/{name}.png")
    z.writestr("notes.txt", "not an image, ignored")
  options = predict.Options(batch_size=2)
  predictor = predict.Predictor(model, options)
  out = tmp_path / "out"
  out.mkdir()
  to_mask = predict._to_mask  # pylint: disable=protected-access
  shapes = predictor.run(predict.list_inputs(archive),
                         lambda name, size, p: (name, to_mask(p, size, model, options).shape))
  assert dict(shapes) == {f"{name}.png": size for name, size in sizes.items()}
  modes = {name: predict.fit_mode(model.config, size) for name, size in sizes.items()}
  assert modes == {"a": "resize", "b": "resize", "c": "pad", "d": "same", "e": "resize"}
  assert predictor.predict_fn._cache_size() == 1  # pylint: disable=protected-access


def test_unreadable_image_fails_by_name_or_is_skipped(tgs_dir, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for path in sorted((tgs_dir / "train" / "images").glob("*.png"))[:3]:
    (folder / path.name).write_bytes(path.read_bytes())
  (folder / "broken.png").write_bytes(b"not a png")
  with pytest.raises(predict.UnreadableImageError, match="broken.png.*--skip_unreadable"):
    predict.predict(trained_workdir(), folder, tmp_path / "out")
  submission = tmp_path / "s.csv"
  summary = predict.predict(trained_workdir(), folder, tmp_path / "out", predict.Options(
      skip_unreadable=True, submission=str(submission), format="tgs"))
  assert summary["skipped"] == ["broken.png"] and summary["predicted"] == 3
  assert len(rle.read_submission(submission)[1]) == 3


def test_input_and_option_errors(tmp_path):
  with pytest.raises(MissingDataError, match="does not exist"):
    predict.list_inputs(tmp_path / "nope")
  with pytest.raises(MissingDataError, match="no images"):
    predict.list_inputs(tmp_path)
  (tmp_path / "x.png").write_bytes(b"")
  with pytest.raises(ConfigError, match="--format"):
    predict.predict(trained_workdir(), tmp_path, tmp_path / "out",
                    predict.Options(submission=str(tmp_path / "s.csv")))


def test_cli_unreadable_image_is_one_line(tmp_path):
  (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
  result = subprocess.run(
      [sys.executable, "-m", "unet_jax.predict", f"--workdir={trained_workdir()}",
       f"--input={tmp_path}", f"--output={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: cannot read image bad.jpg")
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("size", [101, 128], ids=["shipped_101", "padded_128"])
def test_one_channel_model_without_batchnorm(tgs_dir, tmp_path, size):
  """A TGS-style run, no BatchNorm: gray 101x101 seen as is (the model mirrors it to its own
  multiple, configs/tgs.py) or mirrored to 128x128 by predict and cropped back."""
  config = tiny_config(image_size=(size, size), data_resolution="native",
                       **{"model.norm": "none"})
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  model = models.from_config(config)
  sample = np.zeros((1, size, size, 1), np.uint8)
  state = jax.jit(lambda x: steps.create_train_state(model, optax.sgd(0.1), x, 0))(sample)
  saver = checkpoints.Checkpoints(tmp_path, max_to_keep=1, best_metric="dice", best_mode="max")
  saver.save(3, state, None, metrics={"dice": 0.5})
  saver.close()
  loaded = inference.load(tmp_path)
  assert (loaded.input_channels, loaded.step, loaded.state.batch_stats) == (1, 3, {})
  folder = tmp_path / "in"
  folder.mkdir()
  for path in sorted((tgs_dir / "train" / "images").glob("*.png"))[:5]:
    (folder / path.name).write_bytes(path.read_bytes())
  predict.predict(tmp_path, folder, tmp_path / "out", predict.Options(
      submission=str(tmp_path / "s.csv"), format="tgs"))
  ids = {p.stem: (101, 101) for p in folder.glob("*.png")}
  assert len(validate_submission(tmp_path / "s.csv", "tgs", ids, tmp_path / "out")) == 5
  first = sorted(folder.glob("*.png"))[0]  # By hand: pad by mirroring, predict, crop.
  gray = np.asarray(Image.open(first).convert("L"))
  assert predict.fit_mode(config, gray.shape) == ("same" if size == 101 else "pad")
  before, after = (size - 101) // 2, size - 101 - (size - 101) // 2
  padded = np.pad(gray, [(before, after), (before, after)], mode="reflect")[None, ..., None]
  probabilities = inference.make_predict_fn()(loaded.state, padded)[0, before:before + 101,
                                                                    before:before + 101, 0]
  written = np.asarray(Image.open(tmp_path / "out" / first.name)) > 0
  np.testing.assert_array_equal(written, np.asarray(probabilities) > 0.5)


def test_padding_matches_the_training_pipeline():
  """predict pads like data.sources.pad_to (OpenCV or numpy), so TGS scores match evaluate."""
  from unet_jax.data import sources  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  for shape in [(101, 101, 1), (101, 101, 3), (5, 9, 1), (128, 100, 3)]:
    image = rng.integers(0, 256, shape, np.uint8)
    expected = sources.pad_to(image, (128, 128)).reshape(128, 128, shape[-1])
    padded = predict._pad_reflect(image, (128, 128))  # pylint: disable=protected-access
    np.testing.assert_array_equal(padded, expected)
