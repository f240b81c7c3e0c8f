"""model.resize_to: the U-Net sees its input resized, the logits come back at the input size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from tests.conftest import tiny_binary_step_inputs, tiny_config
from unet_jax import losses, models, steps, tiny_unet
from unet_jax.errors import ConfigError


def test_logits_are_the_resized_input_s_logits_resized_back():
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 13, 11, 1)), jnp.float32)
  resized = tiny_unet(conv_impl="xla", resize_to=(16, 20))
  plain = tiny_unet(conv_impl="xla")
  variables = resized.init(jax.random.key(0), images)
  logits = resized.apply(variables, images)
  assert logits.shape == (2, 13, 11, 1)
  inner = plain.apply(variables, jax.image.resize(images, (2, 16, 20, 1), "bilinear"))
  expected = jax.image.resize(inner, (2, 13, 11, 1), "bilinear")
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # Not the same function as the U-Net on the input itself (mirrored to 16x12 inside).
  assert not np.allclose(logits, plain.apply(variables, images), atol=1e-3)


def test_a_train_step_on_a_resized_model_is_finite_and_moves_the_weights():
  config = tiny_config()
  config.model.conv_impl = "xla"
  config.model.resize_to = (24, 24)
  config.warmup_steps = 0
  state, batch, _, _ = tiny_binary_step_inputs(config)
  new_state, metrics = steps.train_step(state, batch, loss_fn=losses.bce_dice, ignore_index=None)
  assert np.isfinite(metrics["loss"])
  before, after = state.params["head"]["kernel"], new_state.params["head"]["kernel"]
  assert not np.allclose(before, after)


@pytest.mark.parametrize("size", [(128,), (0, 128), (128, 128, 3)])
def test_config_refuses_a_size_that_is_not_two_positive_numbers(size):
  config = default.get_config()
  config.model.resize_to = size
  with pytest.raises(ConfigError, match="model.resize_to=.* needs two positive sizes"):
    models.from_config(config)


def test_config_passes_resize_to_and_defaults_to_none():
  config = default.get_config()
  assert models.from_config(config).resize_to == ()
  config.model.resize_to = (128, 128)
  assert models.from_config(config).resize_to == (128, 128)


def test_config_refuses_resize_to_with_deep_supervision():
  config = default.get_config()
  config.model.resize_to = (128, 128)
  config.model.deep_supervision = True
  with pytest.raises(ConfigError, match="resize_to and model.deep_supervision do not combine"):
    models.from_config(config)
