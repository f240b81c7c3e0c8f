"""Metrics against hand-worked cases and independent numpy references."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import losses, metrics


def _numpy_confusion(truth, predicted, num_classes, ignore=None):
  keep = np.ones(truth.shape, bool) if ignore is None else truth != ignore
  return np.bincount(truth[keep] * num_classes + predicted[keep],
                     minlength=num_classes**2).reshape(num_classes, num_classes)


def _reference_tgs(truth, predicted):
  """The competition's metric for one image, in exact fractions."""
  truth, predicted = truth > 0, predicted > 0
  if not truth.any():
    return 1.0 if not predicted.any() else 0.0
  iou = Fraction(int((truth & predicted).sum()), int((truth | predicted).sum()))
  return sum(iou > Fraction(10 + k, 20) for k in range(10)) / 10


def _tgs(predicted, truth):
  predicted, truth = jnp.asarray(predicted), jnp.asarray(truth)
  return np.asarray(metrics.tgs_image_precision(predicted, truth, losses.pixel_weights(truth)))


def test_tgs_metric_edge_cases():
  empty, full = np.zeros((1, 4, 5), np.int32), np.ones((1, 4, 5), np.int32)
  one_pixel = empty.copy()
  one_pixel[0, 2, 3] = 1
  assert _tgs(empty, empty) == [1.0]  # Empty truth, empty prediction.
  assert _tgs(one_pixel, empty) == [0.0]  # Empty truth, any prediction.
  assert _tgs(full, empty) == [0.0]
  assert _tgs(empty, full) == [0.0]  # Missed object.
  assert _tgs(full, full) == [1.0]


def test_tgs_metric_hand_worked_iou_thresholds():
  truth = np.zeros((1, 4, 5), np.int32)
  truth[0, :, :4] = 1  # 16 pixels.
  predicted = np.zeros_like(truth)
  predicted[0, :3, :4] = 1  # 12 inside: IoU = 12 / 16 = 0.75 exactly.
  # Hits at 0.50, 0.55, 0.60, 0.65, 0.70; 0.75 is not > 0.75.
  np.testing.assert_allclose(_tgs(predicted, truth), [0.5])
  predicted[0, 3, 0] = 1  # IoU 13 / 16 = 0.8125: one more hit.
  np.testing.assert_allclose(_tgs(predicted, truth), [0.7])


def test_tgs_metric_matches_reference_on_random_masks():
  rng = np.random.default_rng(0)
  truth = (rng.random((60, 9, 11)) < rng.random((60, 1, 1))).astype(np.int32)
  truth[::7] = 0  # Some empty truths.
  flips = rng.random(truth.shape) < rng.random((60, 1, 1)) * 0.3
  predicted = np.where(flips, 1 - truth, truth)
  predicted[::11] = 0
  expected = [_reference_tgs(t, p) for t, p in zip(truth, predicted)]
  np.testing.assert_allclose(_tgs(predicted, truth), expected, atol=1e-7)
  sums = metrics.tgs_sums(jnp.asarray(predicted), jnp.asarray(truth),
                          losses.pixel_weights(jnp.asarray(truth)))
  np.testing.assert_allclose(sums["tgs_precision_sum"] / sums["image_count"], np.mean(expected),
                             rtol=1e-6)
  # The score split by truth: empty images (a prediction must be empty too) and salt images.
  totals = {**sums, "confusion": metrics.confusion_matrix(jnp.asarray(predicted),
                                                          jnp.asarray(truth), 1.0, 2)}
  scores = metrics.scores_from_sums(totals)
  empty = truth.reshape(60, -1).max(axis=1) == 0
  assert 0 < empty.sum() < 60
  np.testing.assert_allclose(scores["tgs_map_empty"], np.mean(np.array(expected)[empty]),
                             rtol=1e-6)
  np.testing.assert_allclose(scores["tgs_map_salt"], np.mean(np.array(expected)[~empty]),
                             rtol=1e-6)


def test_tgs_sums_skip_padding_examples():
  truth = np.zeros((3, 4, 4), np.int32)
  predicted = np.ones((3, 4, 4), np.int32)
  predicted[0] = 0  # Image 0 scores 1; the rest 0, but image 2 is padding.
  valid = jnp.array([1.0, 1.0, 0.0])
  weights = losses.pixel_weights(jnp.asarray(truth), None, valid)
  sums = metrics.tgs_sums(jnp.asarray(predicted), jnp.asarray(truth), weights, valid)
  assert float(sums["image_count"]) == 2 and float(sums["tgs_precision_sum"]) == 1
  assert float(sums["empty_count"]) == 2 and float(sums["tgs_empty_precision_sum"]) == 1


def test_binary_scores_hand_worked():
  truth = np.array([[1, 1, 0, 0]])
  predicted = np.array([[1, 0, 1, 0]])
  confusion = metrics.confusion_matrix(jnp.asarray(predicted), jnp.asarray(truth),
                                       losses.pixel_weights(jnp.asarray(truth)), 2)
  np.testing.assert_array_equal(confusion, [[1, 1], [1, 1]])
  scores = metrics.scores_from_confusion(confusion)
  assert scores["dice"] == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
  assert scores["iou"] == pytest.approx(1 / 3)
  assert scores["pixel_accuracy"] == pytest.approx(0.5)
  empty = metrics.scores_from_confusion(np.array([[4, 0], [0, 0]]))
  assert empty["dice"] == empty["iou"] == 1.0  # Empty truth predicted empty.


def test_multiclass_scores_match_numpy_with_void_ignored():
  rng = np.random.default_rng(1)
  truth = rng.integers(0, 5, (4, 16, 16))
  truth[rng.random(truth.shape) < 0.2] = 11  # void
  predicted = rng.integers(0, 5, truth.shape)
  predicted[truth == 2] = 2  # Class 2 predicted perfectly where it is true.
  confusion = metrics.confusion_matrix(jnp.asarray(predicted), jnp.asarray(truth),
                                       losses.pixel_weights(jnp.asarray(truth), 11), 5)
  expected = _numpy_confusion(truth, predicted, 5, ignore=11)
  np.testing.assert_array_equal(confusion, expected)
  scores = metrics.scores_from_confusion(confusion)
  keep = truth != 11
  ious = []
  for c in range(5):
    t, p = truth[keep] == c, predicted[keep] == c
    ious.append((t & p).sum() / (t | p).sum())
    assert scores[f"iou_class_{c}"] == pytest.approx(ious[-1])
  assert scores["miou"] == pytest.approx(np.mean(ious))
  assert scores["pixel_accuracy"] == pytest.approx((truth[keep] == predicted[keep]).mean())


def test_scores_accumulate_over_the_split_not_per_batch():
  rng = np.random.default_rng(2)
  truth = (rng.random((2, 8, 8)) < np.array([0.05, 0.6])[:, None, None]).astype(np.int32)
  predicted = (rng.random((2, 8, 8)) < 0.5).astype(np.int32)

  def sums(sl):
    t, p = jnp.asarray(truth[sl]), jnp.asarray(predicted[sl])
    weights = losses.pixel_weights(t)
    return {"confusion": metrics.confusion_matrix(p, t, weights, 2),
            **metrics.tgs_sums(p, t, weights)}

  split = metrics.scores_from_sums(jax.tree.map(lambda a, b: a + b, sums(slice(0, 1)),
                                                sums(slice(1, 2))))
  whole = metrics.scores_from_sums(sums(slice(0, 2)))
  t, p = truth > 0, predicted > 0
  assert split["dice"] == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
  assert split == pytest.approx(whole)
  per_batch_mean = np.mean([metrics.scores_from_sums(sums(slice(i, i + 1)))["dice"]
                            for i in range(2)])
  assert per_batch_mean != pytest.approx(split["dice"])


def test_threshold_sweep_matches_single_thresholds_and_min_areas():
  rng = np.random.default_rng(3)
  scales = np.array([1.0, 0.55, 0.6, 0.9, 0.52])[:, None, None]  # Few pixels above 0.5 in some.
  probabilities = jnp.asarray(rng.random((5, 6, 7)) * scales, jnp.float32)
  truth = jnp.asarray(rng.random((5, 6, 7)) < 0.4, jnp.int32)
  weights = losses.pixel_weights(truth)
  thresholds, min_areas = [0.3, 0.5, 0.7], [0, 5, 12]
  swept = metrics.threshold_sweep_sums(probabilities, truth, weights, thresholds,
                                       min_areas=min_areas)
  assert swept["confusion"].shape == (3, 3, 2, 2)
  for i, threshold in enumerate(thresholds):
    for j, min_area in enumerate(min_areas):
      predicted = np.array(probabilities > threshold, np.int32)
      predicted[predicted.sum(axis=(1, 2)) < min_area] = 0  # Emptied images.
      np.testing.assert_array_equal(swept["confusion"][i, j],
                                    metrics.confusion_matrix(predicted, truth, weights, 2))
      np.testing.assert_allclose(swept["tgs_precision_sum"][i, j],
                                 metrics.tgs_sums(predicted, truth, weights)["tgs_precision_sum"])
  # Some image was emptied by the larger areas, or the test would not test them.
  assert not np.array_equal(swept["confusion"][1, 0], swept["confusion"][1, 2])


def test_drop_small_masks_counts_only_weighted_pixels():
  predictions = jnp.ones((2, 4, 4), jnp.int32).at[1, :2].set(0)  # 16 and 8 foreground pixels.
  weights = jnp.ones((2, 4, 4)).at[0, :, :2].set(0)  # Image 0: only 8 counted.
  kept = metrics.drop_small_masks(predictions, weights, 9)
  assert kept.sum(axis=(1, 2)).tolist() == [0, 0]
  kept = metrics.drop_small_masks(predictions, weights, 8)
  np.testing.assert_array_equal(kept, predictions)