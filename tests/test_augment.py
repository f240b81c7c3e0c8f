"""Augmentations: image and mask stay aligned, labels stay labels, a seed fixes the result."""

import ml_collections
import numpy as np
import pytest

from unet_jax.data import augment, pipeline


def _config(**fields):
  base = dict(hflip=False, rotation_degrees=0.0, scale=0.0, brightness=0.0, contrast=0.0)
  return ml_collections.ConfigDict({**base, **fields})


def _blobs(height=96, width=128, seed=0):
  """A smooth random image whose thresholded version is the mask."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1))
  yy, xx = np.linspace(0, coarse.shape[0] - 1, height), np.linspace(0, coarse.shape[1] - 1, width)
  rows = np.array([np.interp(xx, np.arange(coarse.shape[1]), r) for r in coarse])
  smooth = np.array([np.interp(yy, np.arange(coarse.shape[0]), c) for c in rows.T]).T
  image = np.clip(smooth, 0, 255).astype(np.uint8)
  return {"image": np.stack([image, 255 - image, image // 2], -1), "mask": (image > 127)
          .astype(np.uint8)}


def test_nothing_asked_is_no_transform():
  assert augment.make_augment(_config()) is None


@pytest.mark.parametrize("seed", range(6))
def test_warp_keeps_image_and_mask_aligned(seed):
  transform = augment.make_augment(_config(hflip=True, rotation_degrees=15.0, scale=0.4))
  element = _blobs(seed=seed)
  out = transform(element, np.random.default_rng(seed))
  assert out["image"].shape == element["image"].shape and out["image"].dtype == np.uint8
  assert set(np.unique(out["mask"])) <= {0, 1}
  derived = out["image"][..., 0] > 127
  agreement = (derived == out["mask"].astype(bool)).mean()
  assert agreement > 0.98, agreement
  assert not np.array_equal(out["mask"], element["mask"])  # It did move.


def test_flip_alone_mirrors_both():
  transform = augment.make_augment(_config(hflip=True))
  element = _blobs()
  outs = [transform(element, np.random.default_rng(s)) for s in range(8)]
  flipped = [o for o in outs if not np.array_equal(o["mask"], element["mask"])]
  assert 0 < len(flipped) < 8
  for out in flipped:
    np.testing.assert_array_equal(out["image"], element["image"][:, ::-1])
    np.testing.assert_array_equal(out["mask"], element["mask"][:, ::-1])


@pytest.mark.parametrize("backend", ["opencv", "pil"])
def test_both_backends_flip_exactly_and_stay_aligned(backend, monkeypatch):
  if backend == "pil":
    monkeypatch.setattr(augment, "cv2", None)
  elif augment.cv2 is None:
    pytest.skip("OpenCV is not installed")
  element = _blobs()
  flip = augment.make_augment(_config(hflip=True, rotation_degrees=1e-9))
  outs = [flip(element, np.random.default_rng(s)) for s in range(6)]
  close = lambda a, b: np.abs(a.astype(int) - b).max() <= 1  # PIL's bilinear rounds.
  assert any(close(o["image"], element["image"][:, ::-1]) for o in outs)
  assert any(close(o["image"], element["image"]) for o in outs)
  for out in outs:
    assert any(np.array_equal(out["mask"], m) for m in (element["mask"], element["mask"][:, ::-1]))
  warp = augment.make_augment(_config(rotation_degrees=15.0, scale=0.4))
  out = warp(element, np.random.default_rng(7))
  assert ((out["image"][..., 0] > 127) == out["mask"].astype(bool)).mean() > 0.98


def test_labels_stay_labels():
  rng = np.random.default_rng(1)
  labels = rng.choice(np.array([0, 3, 11], np.uint8), size=(64, 80))
  element = {"image": rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), "mask": labels}
  transform = augment.make_augment(_config(rotation_degrees=30.0, scale=0.5))
  for seed in range(5):
    assert set(np.unique(transform(element, np.random.default_rng(seed))["mask"])) <= {0, 3, 11}


def test_no_empty_border_is_invented():
  element = {"image": np.full((60, 90), 200, np.uint8), "mask": np.ones((60, 90), np.uint8)}
  transform = augment.make_augment(_config(rotation_degrees=20.0, scale=0.2))
  for seed in range(10):
    out = transform(element, np.random.default_rng(seed))
    assert out["mask"].all() and (out["image"] == 200).all()


def test_brightness_contrast_touch_the_image_only():
  element = _blobs()
  transform = augment.make_augment(_config(brightness=0.2, contrast=0.3))
  out = transform(element, np.random.default_rng(3))
  np.testing.assert_array_equal(out["mask"], element["mask"])
  assert not np.array_equal(out["image"], element["image"])
  gray = {"image": element["image"][..., 0], "mask": element["mask"]}
  assert transform(gray, np.random.default_rng(3))["image"].shape == (96, 128)
  still = augment.random_brightness_contrast(element, np.random.default_rng(0), 0.0, 0.0)
  np.testing.assert_array_equal(still["image"], element["image"])


class _Blobs:

  def __len__(self):
    return 12

  def __getitem__(self, index):
    return _blobs(64, 64, seed=index)


def test_augmented_batches_depend_on_seed_and_step_only():
  transform = augment.make_augment(_config(hflip=True, rotation_degrees=10.0, scale=0.2,
                                           brightness=0.1, contrast=0.2))

  def batches(seed):
    iterator = iter(pipeline.train_dataset(_Blobs(), global_batch_size=4, seed=seed,
                                           augment=transform))
    return [next(iterator) for _ in range(4)]

  first, again, other = batches(0), batches(0), batches(1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))
