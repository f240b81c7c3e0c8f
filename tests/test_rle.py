"""RLE: Kaggle's own TGS rows, the Carvana sample, round trips and malformed strings."""

import numpy as np
import pytest
from PIL import Image

from unet_jax import rle


def test_hand_worked_orders():
  mask = np.array([[1, 1, 0],
                   [0, 1, 1]])
  assert rle.encode(mask, "C") == "1 2 5 2"  # Row-major: pixels 1 2 | 5 6.
  assert rle.encode(mask, "F") == "1 1 3 2 6 1"  # Column-major: 1 | 3 4 | 6.
  assert rle.encode(mask, "carvana") == rle.encode(mask, "C")
  assert rle.encode(mask, "tgs") == rle.encode(mask, "F")
  assert rle.encode(np.zeros((3, 3)), "F") == ""


def test_round_trip_random_masks():
  rng = np.random.default_rng(0)
  shapes = [(1, 1), (1, 7), (5, 1), (3, 4), (101, 101), (13, 17), (64, 63)]
  for trial in range(200):
    shape = shapes[trial % len(shapes)]
    kind = trial % 4
    if kind == 0:
      mask = np.zeros(shape, np.uint8)
    elif kind == 1:
      mask = np.ones(shape, np.uint8)
    else:
      mask = (rng.random(shape) < rng.random()).astype(np.uint8)
    for order in ("C", "F"):
      encoded = rle.encode(mask, order)
      np.testing.assert_array_equal(rle.decode(encoded, shape, order), mask)
  assert rle.encode(np.ones((3, 5)), "C") == "1 15"


def test_tgs_reproduces_kaggle_train_csv(tgs_dir):
  _, rows = rle.read_submission(tgs_dir / "train.csv")
  assert len(rows) == len(list((tgs_dir / "train" / "masks").glob("*.png")))
  mismatches = []
  for image_id, expected in rows:
    mask = np.asarray(Image.open(tgs_dir / "train" / "masks" / f"{image_id}.png")) > 0
    if rle.encode(mask, "tgs") != expected:
      mismatches.append(image_id)
    np.testing.assert_array_equal(rle.decode(expected, mask.shape, "tgs"), mask)
  assert not mismatches, f"{len(mismatches)} of {len(rows)} rows differ, e.g. {mismatches[:3]}"


def test_carvana_sample_encodes_to_computed_csv(carvana_dir):
  header, rows = rle.read_submission(carvana_dir / "train_masks_rle_computed.csv")
  assert header == rle.HEADERS["carvana"]
  assert len(rows) == 48
  for name, expected in rows:
    gif = carvana_dir / "train_masks" / name.replace(".jpg", "_mask.gif")
    mask = np.asarray(Image.open(gif)) == 1  # Palette index 1 = car.
    assert rle.encode(mask, "carvana") == expected, name


@pytest.mark.parametrize("bad, problem", [
    ("1 2 3", "odd number"),
    ("1 x", "'x' is not an integer"),
    ("0 3", "1-indexed"),
    ("1 0", "length 0"),
    ("5 2 1 2", "overlaps"),
    ("1 3 3 2", "overlaps"),
    ("8 3", "has 9 pixels"),
    ("1.5 2", "is not an integer"),
])
def test_malformed_rle_names_the_problem(bad, problem):
  with pytest.raises(ValueError, match=problem):
    rle.decode(bad, (3, 3))


def test_submission_round_trip(tmp_path):
  path = tmp_path / "s.csv"
  rle.write_submission(path, [("a", "1 2"), ("b", "")], "tgs")
  assert path.read_text() == "id,rle_mask\na,1 2\nb,\n"
  assert rle.read_submission(path) == (("id", "rle_mask"), [("a", "1 2"), ("b", "")])
