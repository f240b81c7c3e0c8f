"""The prediction grid, drawn as one image: what each cell holds."""

import matplotlib
import numpy as np
from PIL import Image

from unet_jax import plots

H, W, G = 6, 8, plots.GAP


def _cell(mosaic, row, col):
  top, left = row * (H + G), col * (W + G)
  return mosaic[top:top + H, left:left + W]


def _example(seed):
  rng = np.random.default_rng(seed)
  image = rng.normal(3.0, 2.0, (H, W, 1)).astype(np.float32)
  truth = np.zeros((H, W), np.int32)
  truth[1:5, 2:7] = 1
  return image, truth, np.roll(truth, 1, axis=1)


def test_rows_hold_the_stretched_image_the_truth_and_the_prediction_between_white_gaps():
  examples = [_example(seed) for seed in range(3)]
  images, truths, predictions = map(np.stack, zip(*examples))
  mosaic = plots.prediction_mosaic(images, truths, predictions, num_classes=2)
  assert mosaic.shape == (3 * H + 2 * G, 3 * W + 2 * G, 3)
  for row, (image, truth, predicted) in enumerate(examples):
    gray = (image[..., 0] - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(_cell(mosaic, row, 0), np.repeat(gray[..., None], 3, -1),
                               atol=1e-6)
    np.testing.assert_array_equal(_cell(mosaic, row, 1)[..., 0], truth)
    np.testing.assert_array_equal(_cell(mosaic, row, 2)[..., 1], predicted)
  assert (mosaic[H:H + G] == 1).all() and (mosaic[:, W:W + G] == 1).all()


def test_max_rows_caps_the_grid():
  images, truths, predictions = map(np.stack, zip(*[_example(s) for s in range(5)]))
  mosaic = plots.prediction_mosaic(images, truths, predictions, 2, max_rows=2)
  assert mosaic.shape[0] == 2 * H + G


def test_overlay_fills_the_prediction_red_and_outlines_the_truth_in_lime():
  image, truth, predicted = _example(0)
  mosaic = plots.prediction_mosaic(image[None], truth[None], predicted[None], 2, overlay=True)
  assert mosaic.shape == (H, 2 * W + G, 3)
  plain, overlaid = _cell(mosaic, 0, 0), _cell(mosaic, 0, 1)
  outline = np.zeros((H, W), bool)
  outline[1:5, 2:7] = True
  outline[2:4, 3:6] = False  # The region's interior.
  np.testing.assert_array_equal((overlaid == plots.OUTLINE_LIME).all(-1), outline)
  inside_only = (predicted > 0) & ~outline
  np.testing.assert_allclose(overlaid[inside_only],
                             0.55 * plain[inside_only] + 0.45 * plots.PREDICTION_RED, atol=1e-6)
  untouched = (predicted == 0) & ~outline
  np.testing.assert_array_equal(overlaid[untouched], plain[untouched])


def test_class_maps_take_tab20_colours_and_a_png_is_written(tmp_path):
  labels = np.arange(H * W).reshape(1, H, W) % 11
  image = np.random.default_rng(0).random((1, H, W, 3)).astype(np.float32)
  mosaic = plots.prediction_mosaic(image, labels, labels, num_classes=11)
  colours = matplotlib.colormaps["tab20"](labels[0])[..., :3]
  np.testing.assert_allclose(_cell(mosaic, 0, 1), colours, atol=1e-6)
  plots.plot_predictions(image, labels, labels, tmp_path / "grid.png", num_classes=11)
  with Image.open(tmp_path / "grid.png") as png:
    assert png.size[0] > 3 * W and png.size[1] > H
  assert not list(tmp_path.glob("*.tmp.png"))
