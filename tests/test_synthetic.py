"""The generated shapes dataset: deterministic, labelled as documented."""

import numpy as np

from unet_jax.data import synthetic


def test_same_seed_same_examples_and_different_seed_different_examples():
  a = synthetic.SyntheticShapes(8, (32, 40), seed=3)
  b = synthetic.SyntheticShapes(8, (32, 40), seed=3)
  c = synthetic.SyntheticShapes(8, (32, 40), seed=4)
  for i in range(8):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    np.testing.assert_array_equal(a[i]["mask"], b[i]["mask"])
  assert any(not np.array_equal(a[i]["image"], c[i]["image"]) for i in range(8))


def test_binary_and_multiclass_labels():
  binary = synthetic.SyntheticShapes(16, (48, 48), seed=0)
  multi = synthetic.SyntheticShapes(16, (48, 48), seed=0, multiclass=True)
  for i in range(16):
    image, mask = binary[i]["image"], binary[i]["mask"]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1} and mask.any()
    # Same seed: the multi-class mask marks the same pixels with the shape's class.
    np.testing.assert_array_equal(multi[i]["mask"] > 0, mask > 0)
  values = set()
  for i in range(16):
    values |= set(np.unique(multi[i]["mask"]).tolist())
  assert values == {0, 1, 2, 3, 4}
  assert synthetic.num_classes(True) == 5 and synthetic.num_classes(False) == 1


def test_shapes_differ_from_the_background():
  """With one shape per image, |shape - background| mean intensity is clearly learnable."""
  source = synthetic.SyntheticShapes(32, (64, 64), seed=1, max_shapes=1)
  gaps = []
  for i in range(32):
    image, mask = source[i]["image"].astype(float), source[i]["mask"] > 0
    gaps.append(abs(image[mask].mean() - image[~mask].mean()))
  assert min(gaps) > 20  # On a 0..255 scale, with pixel noise of ~30.


def test_out_of_range_index_raises():
  source = synthetic.SyntheticShapes(2, (8, 8), seed=0)
  try:
    source[2]
  except IndexError:
    return
  raise AssertionError("index 2 of a 2-example source did not raise IndexError")
