"""benchmarks/quality/carvana_fullres.py: the validation cars and the full-resolution Dice it reports."""

import numpy as np
from PIL import Image

from benchmarks.quality import carvana_fullres
from tests.conftest import shared_data_dir
from unet_jax.data import builders, carvana, imaging


def test_validation_cars_are_the_builders_and_dice_is_scored_at_full_size(tmp_path):
  manual_dir = shared_data_dir("carvana")
  pairs = carvana_fullres.validation_pairs(manual_dir)
  every_car = {carvana.car_id(p.stem) for p in (manual_dir / "train").glob("*.jpg")}
  assert {carvana.car_id(key) for key, _, _ in pairs} == builders.hash_split(every_car)
  for key, _, mask_member in pairs:  # Perfect predictions, one image with its top half lost.
    truth = imaging.palette_mask(imaging.open_image(mask_member.read(), mask_member), mask_member)
    if key == pairs[0][0]:
      lost = truth.copy()
      lost[: truth.shape[0] // 2] = 0
      expected_first = 2 * lost.sum() / (lost.sum() + truth.sum())
      truth = lost
    Image.fromarray(truth * 255).save(tmp_path / f"{key}.png")
  scores = carvana_fullres.dice_scores(tmp_path, pairs)
  assert scores["size"] == [1280, 1918] and scores["images"] == len(pairs)
  assert np.isclose(scores["dice_mean_per_image"], (expected_first + len(pairs) - 1) / len(pairs))
  assert expected_first < scores["dice"] < 1.0
