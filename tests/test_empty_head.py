"""The empty-mask head: gated logits, its auxiliary loss, the train step and config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables, tiny_binary_step_inputs, tiny_config
from unet_jax import losses, models, steps, tiny_unet
from unet_jax.errors import ConfigError
from unet_jax.models.unet import gated_logits


def test_gated_logits_is_the_logit_of_the_product_and_stays_finite():
  pixel = jnp.linspace(-8.0, 8.0, 17).reshape(1, 17, 1, 1).repeat(3, axis=0)
  image = jnp.array([[-3.0], [0.0], [4.0]])
  product = jax.nn.sigmoid(pixel) * jax.nn.sigmoid(image)[:, None, None, :]
  np.testing.assert_allclose(jax.nn.sigmoid(gated_logits(pixel, image)), product,
                             rtol=1e-5, atol=1e-6)
  extreme = jnp.array([-200.0, -30.0, 0.0, 30.0, 200.0]).reshape(1, 5, 1, 1)
  for image_logit in (-200.0, 200.0):
    def total(p, i):
      return jnp.sum(gated_logits(p, i))
    grads = jax.grad(total, argnums=(0, 1))(extreme, jnp.array([[image_logit]]))
    assert np.all(np.isfinite(gated_logits(extreme, jnp.array([[image_logit]]))))
    assert all(np.all(np.isfinite(g)) for g in grads)
  # A confident "empty" image turns every pixel off, whatever the pixel logits say.
  assert np.all(jax.nn.sigmoid(gated_logits(extreme, jnp.array([[-30.0]]))) < 1e-12)


def test_image_bce_targets_any_counted_foreground_and_skips_padding_examples():
  labels = np.zeros((3, 4, 4), np.int32)
  labels[0, 1, 1] = 1  # Image 0 has salt, image 1 is empty.
  labels[2, 0, 0] = 1  # Image 2 has salt only on a pixel that does not count.
  weights = np.ones((3, 4, 4), np.float32)
  weights[2, 0, 0] = 0
  logits = jnp.array([[2.0], [-1.0], [3.0]])
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(3.0))])
  np.testing.assert_allclose(losses.image_bce(logits, labels, weights), expected, rtol=1e-6)
  weights[2] = 0  # A padding example: left out.
  np.testing.assert_allclose(losses.image_bce(logits, labels, weights), np.mean(
      [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))]), rtol=1e-6)


def test_unet_empty_head_gates_pixels_and_sows_the_image_logit():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  model = tiny_unet(empty_head=True, conv_impl="xla")
  variables = init_variables(model, x)
  assert variables["params"]["empty_head"]["kernel"].shape == (16, 1)  # 4 * 2**2 channels.
  logits, sown = model.apply(variables, x, mutable=["intermediates"])
  assert logits.shape == (2, 16, 16, 1)
  assert sown["intermediates"]["empty_logit"][0].shape == (2, 1)
  off = jax.tree.map(lambda v: v, variables)
  off["params"]["empty_head"]["bias"] = jnp.full((1,), -40.0)
  assert np.all(jax.nn.sigmoid(model.apply(off, x)) < 1e-12)
  with pytest.raises(ValueError, match="empty_head needs num_classes=1"):
    init_variables(tiny_unet(num_classes=3, empty_head=True), x)


def test_from_config_rejects_an_empty_head_on_a_multiclass_task():
  config = tiny_config()
  config.model.empty_head = True
  config.num_classes = 3
  with pytest.raises(ConfigError, match="model.empty_head needs a binary task"):
    models.from_config(config)


def test_train_step_adds_the_weighted_image_loss():
  config = tiny_config()
  config.model.empty_head = True
  config.model.conv_impl = "xla"
  state, batch, logits, sown = tiny_binary_step_inputs(config)
  weights = jnp.ones(batch["mask"].shape, jnp.float32)
  pixel_loss = losses.bce_dice(logits, batch["mask"], weights)
  image_loss = losses.image_bce(sown["empty_logit"][0], batch["mask"], weights)
  for weight in (0.0, 0.5):
    _, metrics = steps.train_step(state, batch, loss_fn=losses.bce_dice, ignore_index=None,
                                  empty_head_weight=weight)
    np.testing.assert_allclose(metrics["loss"], pixel_loss + weight * image_loss, rtol=1e-5)
