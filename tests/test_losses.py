"""Losses: finite gradients at the extremes, Lovasz against Berman's reference, ignore index."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
try:
  import torch
except ImportError:  # The Lovasz reference code is PyTorch's; without torch those tests skip.
  torch = None

from tests.conftest import tiny_config
from unet_jax import losses, steps
from unet_jax.errors import ConfigError

BINARY = ["bce", "dice", "bce_dice", "focal", "lovasz_hinge", "lovasz_hinge_symmetric",
          "lovasz_hinge_elu", "bce_lovasz_elu", "lovasz_softmax"]
MULTICLASS = ["softmax_ce", "dice", "focal", "lovasz_softmax"]


@functools.cache
def _value_and_grad(name):
  """Jitted value_and_grad of a registered loss, shared across tests (compiles once a shape)."""
  return jax.jit(jax.value_and_grad(losses.get_loss(name)))


def _random_case(seed, num_classes, shape=(2, 5, 6), ignore=None):
  rng = np.random.default_rng(seed)
  channels = 1 if num_classes == 1 else num_classes
  logits = rng.normal(0, 2, shape + (channels,)).astype(np.float32)
  labels = rng.integers(0, max(num_classes, 2), shape)
  if ignore is not None:
    labels = np.where(rng.random(shape) < 0.3, ignore, labels)
  return jnp.asarray(logits), jnp.asarray(labels)


# Berman et al.'s reference (github.com/bermanmaxim/LovaszSoftmax, PyTorch), kept literal.
def _ref_lovasz_grad(gt_sorted):
  gts = gt_sorted.sum()
  intersection = gts - gt_sorted.float().cumsum(0)
  union = gts + (1 - gt_sorted).float().cumsum(0)
  jaccard = 1. - intersection / union
  if len(gt_sorted) > 1:
    jaccard[1:] = jaccard[1:] - jaccard[0:-1]
  return jaccard


def _ref_lovasz_hinge_flat(logits, labels, activation=None):
  if len(labels) == 0:
    return logits.sum() * 0.
  signs = 2. * labels.float() - 1.
  errors = (1. - logits * signs)
  errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
  grad = _ref_lovasz_grad(labels[perm])
  return torch.dot((activation or torch.relu)(errors_sorted), grad)


def _ref_lovasz_hinge(logits, labels, ignore, **kwargs):
  per_image = [_ref_lovasz_hinge_flat(l.reshape(-1)[m.reshape(-1)], y.reshape(-1)[m.reshape(-1)],
                                      **kwargs)
               for l, y, m in zip(logits, labels, labels != ignore)]
  return torch.stack(per_image).mean()


def _ref_lovasz_softmax(probas, labels, ignore):
  c = probas.shape[-1]
  probas, labels = probas.reshape(-1, c), labels.reshape(-1)
  keep = labels != ignore
  probas, labels = probas[keep], labels[keep]
  losses_ = []
  for k in range(c):
    fg = (labels == k).float()
    if fg.sum() == 0:
      continue
    errors = (fg - probas[:, k]).abs()
    errors_sorted, perm = torch.sort(errors, 0, descending=True)
    losses_.append(torch.dot(errors_sorted, _ref_lovasz_grad(fg[perm])))
  return torch.stack(losses_).mean()


needs_torch = pytest.mark.skipif(torch is None, reason="torch (the [dev] extra) is not installed")


REFERENCE_ACTIVATIONS = {"lovasz_hinge": torch.relu if torch else None,
                         "lovasz_hinge_elu": lambda e: torch.nn.functional.elu(e) + 1}


@needs_torch
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", sorted(REFERENCE_ACTIVATIONS))
def test_lovasz_hinge_matches_reference(name, seed):
  """Berman's reference; lovasz_hinge_elu (the TGS discussion's variant) with its dot product
  taken of elu(errors) + 1 in place of relu."""
  logits, labels = _random_case(seed, 1, ignore=255)
  weights = losses.pixel_weights(labels, 255)
  ours, grad = _value_and_grad(name)(logits, labels, weights)
  ref_logits = torch.tensor(np.asarray(logits[..., 0]), requires_grad=True)
  ref = _ref_lovasz_hinge(ref_logits, torch.tensor(np.asarray(labels)), 255,
                          activation=REFERENCE_ACTIVATIONS[name])
  ref.backward()
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad[..., 0], ref_logits.grad.numpy(), rtol=1e-4, atol=1e-6)
  if name == "lovasz_hinge_elu":  # elu(e) + 1 > relu(e) everywhere.
    assert float(ours) > float(_value_and_grad("lovasz_hinge")(logits, labels, weights)[0])


@needs_torch
@pytest.mark.parametrize("seed", range(3))
def test_symmetric_lovasz_hinge_matches_reference(seed):
  """The TGS solutions' symmetric Lovasz: (hinge(x, y) + hinge(-x, 1 - y)) / 2."""
  logits, labels = _random_case(seed, 1, ignore=255)
  labels = labels.at[0].set(jnp.where(labels[0] == 255, 255, 0))  # An image without salt.
  weights = losses.pixel_weights(labels, 255)
  ours, grad = _value_and_grad("lovasz_hinge_symmetric")(logits, labels, weights)
  ref_logits = torch.tensor(np.asarray(logits[..., 0]), requires_grad=True)
  ref_labels = torch.tensor(np.asarray(labels))
  flipped = torch.where(ref_labels == 255, ref_labels, 1 - ref_labels)
  ref = (_ref_lovasz_hinge(ref_logits, ref_labels, 255)
         + _ref_lovasz_hinge(-ref_logits, flipped, 255)) / 2
  ref.backward()
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad[..., 0], ref_logits.grad.numpy(), rtol=1e-4, atol=1e-6)


@needs_torch
@pytest.mark.parametrize("seed", range(5))
def test_lovasz_softmax_matches_reference(seed):
  logits, labels = _random_case(seed, 4, ignore=11)
  weights = losses.pixel_weights(labels, 11)
  ours, _ = _value_and_grad("lovasz_softmax")(logits, labels, weights)
  probas = torch.softmax(torch.tensor(np.asarray(logits)), dim=-1)
  ref = _ref_lovasz_softmax(probas, torch.tensor(np.asarray(labels)), 11)
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5, atol=1e-6)


def test_lovasz_softmax_one_channel_is_two_class_softmax():
  logits, labels = _random_case(0, 1)
  weights = losses.pixel_weights(labels)
  two_class = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)  # softmax == sigmoid
  np.testing.assert_allclose(losses.lovasz_softmax(logits, labels, weights),
                             losses.lovasz_softmax(two_class, labels, weights), rtol=1e-5)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("fill", [0, 1])
@pytest.mark.parametrize("scale", [0.0, 30.0])
def test_binary_gradients_finite_at_uniform_masks(name, fill, scale):
  labels = jnp.full((2, 8, 8), fill)
  logits = jnp.full((2, 8, 8, 1), scale if fill else -scale)  # Confident and right (or 0).
  for sign in (1.0, -1.0):  # ...and confidently wrong.
    loss, grad = _value_and_grad(name)(sign * logits, labels,
                                                           losses.pixel_weights(labels))
    assert np.isfinite(loss) and np.isfinite(grad).all(), (name, fill, scale, sign)


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("fill", [0, 2])
def test_multiclass_gradients_finite_at_uniform_masks(name, fill):
  labels = jnp.full((2, 8, 8), fill)
  logits = 30.0 * jax.nn.one_hot(labels, 3)
  for sign in (1.0, -1.0):
    loss, grad = _value_and_grad(name)(sign * logits, labels,
                                                           losses.pixel_weights(labels))
    assert np.isfinite(loss) and np.isfinite(grad).all(), (name, fill, sign)


@pytest.mark.parametrize("name, num_classes", [(n, 1) for n in BINARY] +
                         [(n, 4) for n in MULTICLASS])
def test_ignore_index_really_ignores(name, num_classes):
  ignore = 11
  logits, labels = _random_case(3, num_classes, ignore=ignore)
  weights = losses.pixel_weights(labels, ignore)
  ignored = np.asarray(labels == ignore)
  loss_fn = _value_and_grad(name)
  loss, grad = loss_fn(logits, labels, weights)
  # Other logits and other labels at the ignored pixels change nothing.
  noise = np.random.default_rng(1).normal(0, 5, logits.shape).astype(np.float32)
  logits_2 = jnp.where(ignored[..., None], logits + noise, logits)
  labels_2 = jnp.where(ignored, 1, labels)
  loss_2, grad_2 = loss_fn(logits_2, labels_2, weights)
  np.testing.assert_allclose(loss, loss_2, rtol=1e-5)
  np.testing.assert_allclose(grad, grad_2, rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(grad)[ignored] == 0)


def test_softmax_ce_and_bce_match_numpy():
  logits, labels = _random_case(4, 3, ignore=11)
  weights = losses.pixel_weights(labels, 11)
  x, y = np.asarray(logits, np.float64), np.asarray(labels)
  keep = y != 11
  log_p = x - np.log(np.exp(x).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_p[keep], y[keep][:, None], 1).mean()
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, weights), expected,
                             rtol=1e-5)
  logits, labels = _random_case(4, 1)
  z, t = np.asarray(logits[..., 0], np.float64), np.asarray(labels, np.float64)
  p = 1 / (1 + np.exp(-z))
  expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
  np.testing.assert_allclose(losses.sigmoid_bce(logits, labels, losses.pixel_weights(labels)),
                             expected, rtol=1e-5)


def test_soft_dice_hand_worked():
  # Probabilities 1, 1, 0, 0 (logits +-100) against truth 1, 0, 1, 0: I = 1, |P| + |T| = 4.
  logits = jnp.array([100.0, 100.0, -100.0, -100.0]).reshape(1, 2, 2, 1)
  labels = jnp.array([1, 0, 1, 0]).reshape(1, 2, 2)
  weights = losses.pixel_weights(labels)
  np.testing.assert_allclose(losses.soft_dice(logits, labels, weights), 1 - 3 / 5, rtol=1e-6)
  np.testing.assert_allclose(losses.soft_dice(logits, labels, weights, smooth=0.0), 0.5,
                             rtol=1e-6)


def test_focal_is_scaled_cross_entropy():
  logits, labels = _random_case(5, 1)
  weights = losses.pixel_weights(labels)
  np.testing.assert_allclose(losses.focal(logits, labels, weights, gamma=0.0),
                             losses.sigmoid_bce(logits, labels, weights), rtol=1e-6)
  z, t = np.asarray(logits[..., 0], np.float64), np.asarray(labels) > 0
  p_true = np.where(t, 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z)))
  expected = np.mean(-(1 - p_true) ** 2 * np.log(p_true))
  np.testing.assert_allclose(losses.focal(logits, labels, weights), expected, rtol=1e-5)


def test_unknown_loss_lists_choices():
  with pytest.raises(ConfigError, match="lovasz_hinge"):
    losses.get_loss("lovasz")


def test_boundary_weight_map():
  mask = np.zeros((20, 30), np.uint8)
  mask[5:15, 2:12] = 1
  mask[5:15, 14:28] = 1  # Two objects 2 pixels apart (columns 12, 13).
  weights = losses.boundary_weight_map(mask, w0=10.0, sigma=5.0)
  assert weights.dtype == np.float32 and weights.shape == mask.shape
  background, foreground = mask == 0, mask == 1
  # Class balance: each class's weights (border term aside) sum to pixels / 2.
  assert np.allclose(weights[foreground].sum(), mask.size / 2, rtol=1e-5)
  w_background = mask.size / (2 * background.sum())
  # Gap pixel (10, 12): d1 = 1, d2 = 2 -> + 10 exp(-9 / 50).
  np.testing.assert_allclose(weights[10, 12], w_background + 10 * np.exp(-9 / 50), rtol=1e-5)
  assert weights[0, 0] < weights[10, 12]
  # One object: no border term; ignored pixels weigh nothing.
  single = np.zeros((20, 30), np.uint8)
  single[5:15, 2:12] = 1
  single[0, :] = 255
  weights = losses.boundary_weight_map(single, ignore_index=255)
  assert np.all(weights[0] == 0)
  assert len(np.unique(weights[1:])) == 2
  element = losses.BoundaryWeights()({"image": np.zeros((20, 30, 3)), "mask": mask})
  assert element["weight"].shape == (20, 30)
  assert losses.weight_map_transform(tiny_config()) is None
  transform = losses.weight_map_transform(tiny_config(weight_map=True, weight_map_w0=3.0))
  assert transform.w0 == 3.0 and transform.sigma == 5.0


class _PixelConv(nn.Module):
  """A 1x1 convolution: the cheapest model train_step can run."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Conv(1, (1, 1))(x)


def test_train_step_multiplies_batch_weight():
  model = _PixelConv()
  images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), np.uint8)
  state = jax.jit(lambda x: steps.create_train_state(model, optax.sgd(0.1), x, seed=0))(images)
  mask = np.ones((2, 8, 8), np.uint8)
  train_step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce,
                                         ignore_index=None))
  _, plain = train_step(state, {"image": images, "mask": mask})
  weight = np.zeros((2, 8, 8), np.float32)
  _, zero = train_step(state, {"image": images, "mask": mask, "weight": weight})
  assert plain["loss"] > 0 and zero["loss"] == 0 and zero["grad_norm"] == 0


class _PixelConvNorm(nn.Module):
  """A 1x1 convolution and a BatchNorm: parameters, optimizer state and batch statistics."""

  @nn.compact
  def __call__(self, x, train: bool):
    return nn.BatchNorm(use_running_average=not train)(nn.Conv(1, (1, 1))(x))


def test_train_step_skips_a_non_finite_update_and_records_it():
  images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), np.uint8)
  mask = np.ones((2, 8, 8), np.uint8)
  state = jax.jit(lambda x: steps.create_train_state(_PixelConvNorm(), optax.adam(0.1), x,
                                                     seed=0))(images)
  train_step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce,
                                         ignore_index=None))
  state, _ = train_step(state, {"image": images, "mask": mask})  # Finite: updated.
  nan_images = np.full(images.shape, np.nan, np.float32)
  skipped, metrics = train_step(state, {"image": nan_images, "mask": mask})
  assert np.isnan(metrics["loss"])
  for name in ("params", "opt_state", "batch_stats"):
    for old, new in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(skipped, name))):
      np.testing.assert_array_equal(old, new, err_msg=name)
  assert (int(skipped.step), int(skipped.nonfinite_steps)) == (2, 1)
  assert int(skipped.first_nonfinite_step) == 2
  after, _ = train_step(skipped, {"image": images, "mask": mask})
  assert int(after.first_nonfinite_step) == 2 and int(after.nonfinite_steps) == 1
  assert not np.array_equal(jax.tree.leaves(after.params)[0], jax.tree.leaves(state.params)[0])
