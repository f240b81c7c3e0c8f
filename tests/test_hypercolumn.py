"""Hypercolumns: the head reads every decoder level, and the config checks."""

import jax
import numpy as np
import pytest

from tests.conftest import init_variables, random_images, tiny_binary_step_inputs, tiny_config
from unet_jax import losses, models, steps, tiny_unet
from unet_jax.errors import ConfigError


@pytest.mark.parametrize("conv_impl", ["xla", "auto"])
def test_the_head_reads_every_decoder_level(conv_impl):
  images = random_images()  # 20x24: padded to 24x24 by the depth-3 model, then cropped back.
  model = tiny_unet(depth=3, conv_impl=conv_impl, hypercolumn=True)
  variables = init_variables(model, images, seed=1)
  kernel = variables["params"]["head"]["kernel"]
  assert kernel.shape == (1, 1, 16 + 8 + 4, 1)  # Decoder levels 2, 1, 0 of 4 features.
  logits = model.apply(variables, images)
  assert logits.shape == images.shape and np.isfinite(logits).all()
  # Zeroing the head's weights on the coarsest level (the first 16 channels) changes the output.
  cut = jax.tree_util.tree_map(lambda x: x, variables)
  cut["params"]["head"]["kernel"] = kernel.at[:, :, :16].set(0.0)
  assert not np.allclose(model.apply(cut, images), logits, atol=1e-4)


def test_without_hypercolumn_the_head_reads_the_last_level_only():
  images = random_images()
  variables = init_variables(tiny_unet(depth=3, conv_impl="xla"), images, seed=1)
  assert variables["params"]["head"]["kernel"].shape == (1, 1, 4, 1)


def test_a_train_step_trains_every_level_through_the_head():
  config = tiny_config()
  config.model.hypercolumn = True
  config.model.conv_impl = "xla"
  config.warmup_steps = 0  # A nonzero learning rate at the first step.
  state, batch, _, _ = tiny_binary_step_inputs(config)
  new_state, metrics = steps.train_step(state, batch, loss_fn=losses.bce_dice, ignore_index=None)
  assert np.isfinite(metrics["loss"])
  head_before = state.params["head"]["kernel"]
  assert head_before.shape == (1, 1, 8 + 4, 1)  # Depth 2: decoder levels 1 and 0.
  assert not np.allclose(new_state.params["head"]["kernel"][:, :, :8], head_before[:, :, :8])


def test_from_config_rejects_hypercolumn_with_valid_padding():
  config = tiny_config()
  config.model.hypercolumn = True
  config.model.padding = "VALID"
  with pytest.raises(ConfigError, match="model.hypercolumn needs model.padding=SAME"):
    models.from_config(config)


def test_the_head_equals_the_1x1_convolution_of_the_resized_concatenation():
  """The head sums each level's 1x1 logits resized; the winners' form concatenates first."""
  rng = np.random.default_rng(1)
  columns = [rng.standard_normal((2, s, s, c)).astype(np.float32)
             for s, c in ((6, 16), (12, 8), (24, 4))]  # Coarsest first, as the decoder runs.
  kernel = rng.standard_normal((1, 1, 28, 1)).astype(np.float32)
  params = {"params": {"kernel": kernel, "bias": np.array([0.3], np.float32)}}
  stacked = jax.numpy.concatenate(
      [jax.image.resize(c, c.shape[:1] + (24, 24) + c.shape[3:], "bilinear") for c in columns],
      axis=-1)
  reference = jax.numpy.einsum("nhwc,ck->nhwk", stacked, kernel[0, 0]) + 0.3
  logits = models.unet.HypercolumnHead(1).apply(params, columns)
  assert logits.shape == (2, 24, 24, 1)
  np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
