"""UNet shapes, parameter counts, dtypes and padding behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables
from unet_jax import UNet, tiny_unet
from unet_jax.models import blocks, unet as unet_lib


def _param_count(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def _analytic_unet_params(in_channels, num_classes, features, depth, bias):
  """Counts conv weights by hand: 3x3 double convs, 2x2 up-convs (with bias), 1x1 head."""
  total, channels = 0, in_channels
  def conv(cin, cout, k, with_bias):
    return cin * cout * k * k + (cout if with_bias else 0)
  bn = 0 if bias else 1  # BatchNorm scale + bias per channel when convs have no bias.
  for level in range(depth + 1):
    out = features * 2**level
    total += conv(channels, out, 3, bias) + conv(out, out, 3, bias) + 2 * bn * 2 * out
    channels = out
  for level in reversed(range(depth)):
    out = features * 2**level
    total += conv(channels, out, 2, True)
    total += conv(2 * out, out, 3, bias) + conv(out, out, 3, bias) + 2 * bn * 2 * out
    channels = out
  return total + conv(channels, num_classes, 1, True)


def test_classic_unet_has_the_papers_31_million_parameters():
  # The paper's U-Net: 1 input channel, 2 classes, convs with bias, transposed-conv decoder.
  paper = UNet(num_classes=2, features=64, depth=4, norm="none")
  count = _param_count(paper, (1, 64, 64, 1))
  assert count == _analytic_unet_params(1, 2, 64, 4, bias=True)
  assert round(count / 1e6, 1) == 31.0
  with_bn = _param_count(UNet(num_classes=2), (1, 64, 64, 3))
  assert with_bn == _analytic_unet_params(3, 2, 64, 4, bias=False)
  assert round(with_bn / 1e6, 1) == 31.0


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("size", [(16, 16), (101, 101), (17, 30)])
def test_output_covers_the_input_for_any_size(padding, size):
  model = UNet(num_classes=3, features=2, depth=3, padding=padding)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, *size, 1)), jnp.float32)
  logits, _ = model.init_with_output(jax.random.key(0), images)
  assert logits.shape == (2, *size, 3)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_valid_without_overlap_tile_matches_the_paper_572_to_388():
  model = UNet(num_classes=2, features=2, depth=4, padding="VALID", overlap_tile=False)
  logits = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                         jnp.zeros((1, 572, 572, 1)))[0])
  assert logits.shape == (1, 388, 388, 2)
  with pytest.raises(ValueError, match="cannot take size 570"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 570, 570, 1))))


def test_valid_size_helpers_agree_with_the_paper():
  assert unet_lib.valid_shrink(4) == 572 - 388
  assert unet_lib.is_valid_input_size(572, 4)
  assert not unet_lib.is_valid_input_size(570, 4)
  assert unet_lib.smallest_valid_input(388, 4) == 572


def test_padding_does_not_leak_between_examples():
  """Cropped-back output for an odd size depends only on its own example."""
  model = tiny_unet(num_classes=1)
  rng = np.random.default_rng(1)
  a, b = (jnp.asarray(rng.normal(size=(1, 13, 21, 1)), jnp.float32) for _ in range(2))
  variables = init_variables(model, a)
  both = model.apply(variables, jnp.concatenate([a, b]))
  np.testing.assert_allclose(both[:1], model.apply(variables, a), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = tiny_unet(num_classes=2, dtype=jnp.bfloat16)
  logits, variables = model.init_with_output(jax.random.key(0), jnp.ones((2, 16, 16, 3)))
  assert logits.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_upsample_modes_and_dropout_train_and_run(upsample):
  model = tiny_unet(num_classes=1, upsample=upsample, dropout=(0.0, 0.3, 0.3))
  images = jnp.ones((2, 16, 16, 1))
  variables = init_variables(model, images)
  out_a, _ = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)},
                         mutable=["batch_stats"])
  out_b, _ = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)},
                         mutable=["batch_stats"])
  assert not np.allclose(out_a, out_b)  # Dropout is active in training...
  np.testing.assert_array_equal(model.apply(variables, images), model.apply(variables, images))


def test_wrong_number_of_dropout_rates_is_rejected():
  with pytest.raises(ValueError, match="needs 3 per-level rates"):
    init_variables(tiny_unet(dropout=(0.1, 0.2)), jnp.ones((1, 16, 16, 1)))


def test_matmul_up_convolution_equals_conv_transpose_in_value_and_gradients():
  from unet_jax.models.blocks import UpSample  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 6)), jnp.float32)
  fast, reference = UpSample(4, impl="matmul"), UpSample(4, impl="conv_transpose")
  params = init_variables(reference, x, seed=1)
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias too.
  assert jax.tree.structure(init_variables(fast, x, seed=1)) == jax.tree.structure(params)
  np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), rtol=1e-5,
                             atol=1e-6)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  grads_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
  grads_reference = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_remat_gives_the_same_loss_and_gradients():
  images = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 1)), jnp.float32)
  plain, remat = tiny_unet(num_classes=1), tiny_unet(num_classes=1, remat=True)
  variables = init_variables(plain, images)
  assert jax.tree.structure(init_variables(remat, images)) == jax.tree.structure(
      variables)

  def loss(model):
    def f(params):
      out, _ = model.apply({**variables, "params": params}, images, train=True,
                           mutable=["batch_stats"])
      return jnp.mean(out**2)
    return f

  (value_a, grads_a) = jax.value_and_grad(loss(plain))(variables["params"])
  (value_b, grads_b) = jax.value_and_grad(loss(remat))(variables["params"])
  np.testing.assert_allclose(value_a, value_b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", ["double_conv", "residual"])
def test_level_blocks_and_squeeze_excitation(block):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  plain = tiny_unet(block=block, conv_impl="xla")
  gated = tiny_unet(block=block, squeeze_excitation=True, conv_impl="xla")
  variables = init_variables(plain, x)
  level = variables["params"]["encoder_0"]
  if block == "residual":  # A ResNet BasicBlock with a 1x1 projection (1 -> 4 channels).
    assert level["downsample_conv"]["kernel"].shape == (1, 1, 1, 4)
    assert level["conv1"]["kernel"].shape == (3, 3, 1, 4)
  else:
    assert set(level) == {"ConvBNReLU_0", "ConvBNReLU_1"}
  gated_variables = init_variables(gated, x)
  se = gated_variables["params"]["encoder_0"]["se"]
  assert se["reduce"]["kernel"].shape == (4, 1) and se["expand"]["kernel"].shape == (1, 4)
  assert plain.apply(variables, x).shape == gated.apply(gated_variables, x).shape == (2, 16, 16, 1)
  # The same weights without their gates give another function: the gate is in the graph.
  # (A residual branch is zero with a zero-initialised bn2 scale: set the scales to 1.)
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.ones_like(v) if "bn2" in jax.tree_util.keystr(path)
      and "scale" in jax.tree_util.keystr(path) else v, gated_variables["params"])
  gated_variables = {**gated_variables, "params": params}
  ungated = {k: {n: m for n, m in v.items() if n != "se"} for k, v in params.items()}
  assert not np.allclose(gated.apply(gated_variables, x),
                         plain.apply({**gated_variables, "params": ungated}, x))
  remat = tiny_unet(block=block, squeeze_excitation=True, conv_impl="xla", remat=True)
  np.testing.assert_allclose(remat.apply(gated_variables, x), gated.apply(gated_variables, x),
                             rtol=1e-6, atol=1e-6)


def test_residual_levels_start_their_last_batch_norm_scale_at_one_unless_told_zero():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 1)), jnp.float32)
  for overrides, scale in (({}, 1.0), ({"zero_init_residual": True}, 0.0)):
    model = tiny_unet(block="residual", conv_impl="xla", **overrides)
    params = init_variables(model, x)["params"]
    scales = [level["bn2"]["scale"] for level in params.values() if "bn2" in level]
    assert len(scales) == 5  # Two encoder levels, the bottleneck, two decoder levels.
    assert all(np.all(np.asarray(s) == scale) for s in scales)


def test_residual_block_needs_same_padding_and_batch_norm():
  with pytest.raises(ValueError, match="block='residual' needs padding='SAME'"):
    init_variables(tiny_unet(block="residual", padding="VALID"), jnp.zeros((1, 64, 64, 1)))


@pytest.mark.parametrize("channels", [16, 3])  # Packed 16-bit draws; odd counts: nn.Dropout.
def test_dropout_keeps_each_element_with_probability_one_minus_rate(channels):
  x = jnp.ones((8, 32, 32, channels), jnp.bfloat16)
  layer = blocks.Dropout(0.3)
  out = layer.apply({}, x, rngs={"dropout": jax.random.key(0)})
  assert out.dtype == x.dtype and out.shape == x.shape
  kept = np.asarray(out, np.float32) != 0
  n = kept.size
  assert abs(kept.mean() - 0.7) < 4 * np.sqrt(0.21 / n)  # Bernoulli(0.7), 4 sigma.
  np.testing.assert_allclose(np.asarray(out, np.float32)[kept], 1 / 0.7, rtol=1e-2)
  for axis in (0, 3):  # No structure: every image and channel keeps ~70%.
    per = kept.mean(axis=tuple(a for a in range(4) if a != axis))
    assert np.all(np.abs(per - 0.7) < 6 * np.sqrt(0.21 * x.shape[axis] / n))
  other = layer.apply({}, x, rngs={"dropout": jax.random.key(1)})
  assert not np.array_equal(np.asarray(other, np.float32) != 0, kept)
  np.testing.assert_array_equal(blocks.Dropout(0.3, deterministic=True).apply({}, x), x)
  assert not np.asarray(blocks.Dropout(1.0).apply({}, x, rngs={"dropout": jax.random.key(0)})).any()


def test_concurrent_excitation_adds_a_per_pixel_gate_to_the_channel_gate():
  """scSE: SE's output plus x * sigmoid(x . w + b), w a 1x1 convolution to one channel."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 6, 8)), jnp.float32)
  channel = blocks.SqueezeExcitation()
  concurrent = blocks.SqueezeExcitation(spatial=True)
  variables = concurrent.init(jax.random.key(0), x)
  kernel, bias = (variables["params"]["spatial"][k] for k in ("kernel", "bias"))
  assert kernel.shape == (8, 1) and bias.shape == (1,)
  se_only = {"params": {k: v for k, v in variables["params"].items() if k != "spatial"}}
  expected = channel.apply(se_only, x) + x * jax.nn.sigmoid(x @ kernel + bias)
  np.testing.assert_allclose(concurrent.apply(variables, x), expected, rtol=1e-6, atol=1e-6)
  unet = tiny_unet(squeeze_excitation=True, excitation="concurrent", conv_impl="xla")
  params = unet.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)["params"]
  assert "spatial" in str(jax.tree_util.tree_structure(params))


def test_config_passes_excitation_and_refuses_unknown_values():
  from configs import default  # pylint: disable=import-outside-toplevel
  from unet_jax import models  # pylint: disable=import-outside-toplevel
  from unet_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.squeeze_excitation = True
  config.model.excitation = "concurrent"
  assert models.from_config(config).excitation == "concurrent"
  config.model.excitation = "spatial"
  with pytest.raises(ConfigError, match="model.excitation='spatial' is not one of"):
    models.from_config(config)
