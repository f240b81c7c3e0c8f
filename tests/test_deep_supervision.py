"""Deep supervision: the extra decoder heads, their weighted loss, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables, random_images, tiny_binary_step_inputs, tiny_config
from unet_jax import losses, models, optim, steps, tiny_unet
from unet_jax.errors import ConfigError


@pytest.mark.parametrize("conv_impl", ["xla", "auto"])
def test_heads_sit_on_every_decoder_level_but_the_last_and_leave_the_output_alone(conv_impl):
  images = random_images()  # 20x24: padded to 24x24 by the depth-3 model, then cropped back.
  model = tiny_unet(depth=3, conv_impl=conv_impl, deep_supervision=True)
  variables = init_variables(model, images, seed=1)
  assert sorted(k for k in variables["params"] if "head" in k) == [
      "deep_head_1", "deep_head_2", "head"]
  logits, sown = model.apply(variables, images, train=True, mutable=["batch_stats",
                                                                     "intermediates"])
  deep = sown["intermediates"]["deep_logits"]
  assert [d.shape for d in deep] == [logits.shape] * 2
  assert all(d.dtype == jnp.float32 for d in deep)
  # Inference with the heads equals the same weights without them.
  plain = tiny_unet(depth=3, conv_impl=conv_impl)
  plain_params = {k: v for k, v in variables["params"].items() if not k.startswith("deep_")}
  plain_variables = {"params": plain_params, "batch_stats": variables["batch_stats"]}
  np.testing.assert_allclose(model.apply(variables, images),
                             plain.apply(plain_variables, images), rtol=1e-6, atol=1e-6)
  assert not np.allclose(deep[0], deep[1])


def test_deep_supervision_loss_halves_per_level_from_the_finest():
  labels = np.zeros((2, 8, 8), np.int32)
  labels[0, 2:5, 2:6] = 1
  weights = jnp.ones(labels.shape)
  coarse, fine = (jax.random.normal(jax.random.key(k), (2, 8, 8, 1)) for k in (2, 3))
  expected = losses.bce_dice(fine, labels, weights) + 0.5 * losses.bce_dice(coarse, labels,
                                                                           weights)
  np.testing.assert_allclose(
      steps.deep_supervision_loss(losses.bce_dice, (coarse, fine), labels, weights), expected,
      rtol=1e-6)


def test_train_step_adds_the_weighted_deep_losses_with_their_own_loss():
  config = tiny_config()
  config.model.deep_supervision = True
  config.model.conv_impl = "xla"
  state, batch, logits, sown = tiny_binary_step_inputs(config)
  weights = jnp.ones(batch["mask"].shape, jnp.float32)
  deep = steps.deep_supervision_loss(losses.sigmoid_bce, sown["deep_logits"], batch["mask"],
                                     weights)
  main = losses.lovasz_hinge(logits, batch["mask"], weights)
  for weight in (0.0, 0.4):
    _, metrics = steps.train_step(state, batch, loss_fn=losses.lovasz_hinge, ignore_index=None,
                                  deep_loss_fn=losses.sigmoid_bce,
                                  deep_supervision_weight=weight)
    np.testing.assert_allclose(metrics["loss"], main + weight * deep, rtol=1e-5)


def test_jit_steps_trains_the_heads_with_the_first_stage_loss():
  config = tiny_config()
  config.model.deep_supervision = True
  config.loss, config.deep_supervision_weight = "bce", 1.0
  # float32 whatever model.dtype='auto' picks here: jit and op-by-op bfloat16 round apart.
  config.model.dtype = "float32"
  model = models.from_config(config)
  images = np.random.default_rng(1).integers(0, 255, (4, 16, 16), np.uint8)
  masks = (images > 128).astype(np.int32)
  state = steps.create_train_state(model, optim.make_optimizer(config, 4), images, seed=0)
  # The second stage's step: the heads still see `config.loss` (BCE), not the Lovasz hinge.
  train_step = steps.jit_steps(config, "lovasz_hinge")[0]
  logits, sown = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                steps.normalize_images(images), train=True,
                                mutable=["batch_stats", "intermediates"])
  weights = jnp.ones(masks.shape)
  expected = losses.lovasz_hinge(logits, masks, weights) + steps.deep_supervision_loss(
      losses.sigmoid_bce, sown["intermediates"]["deep_logits"], masks, weights)
  _, metrics = train_step(state, {"image": images, "mask": masks})
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4)


def test_from_config_rejects_deep_supervision_with_valid_padding():
  config = tiny_config()
  config.model.deep_supervision = True
  config.model.padding = "VALID"
  with pytest.raises(ConfigError, match="model.deep_supervision needs model.padding=SAME"):
    models.from_config(config)


def test_inference_does_not_run_the_heads():
  images = random_images((1, 16, 16, 1))
  model = tiny_unet(conv_impl="xla", deep_supervision=True)
  variables = init_variables(model, images, seed=1)
  plain_variables = {"params": {k: p for k, p in variables["params"].items()
                                if not k.startswith("deep_")},
                     "batch_stats": variables["batch_stats"]}
  # A one-logit head on XLA is a channel sum (layers.ChannelSumHead), not a convolution.
  count = lambda jaxpr: jaxpr.count("conv_general_dilated") + jaxpr.count("reduce_sum")
  with_heads = str(jax.make_jaxpr(model.apply)(variables, images))
  without = str(jax.make_jaxpr(tiny_unet(conv_impl="xla").apply)(plain_variables, images))
  assert count(with_heads) == count(without)
  training = str(jax.make_jaxpr(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"]))(variables, images))
  assert count(training) > count(without)
