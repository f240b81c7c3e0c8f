"""The GPU step's XLA formulations (up-convolution as an adjoint convolution, max-pool as a
reshaped max, the one-logit head as a channel sum) compute what the first GPU run's did."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.models import UNet
from unet_jax.models import blocks
from unet_jax.ops import layers


def _close(a, b, tol=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-12), (a, b)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 3)])
def test_adjoint_conv_up_convolution_matches_the_matmul_and_its_gradients(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  variables = blocks.UpConv2x2(4, method="matmul").init(jax.random.key(1), x)
  # A non-zero bias, so that its gradient and its addition are both checked.
  variables = jax.tree.map(lambda v: v + 0.1, variables)
  target = jax.random.normal(jax.random.key(2), (shape[0], 2 * shape[1], 2 * shape[2], 4))

  def loss(method):
    model = blocks.UpConv2x2(4, method=method)
    return jax.jit(jax.value_and_grad(
        lambda v, x: jnp.sum(jnp.sin(model.apply(v, x)) * target), argnums=(0, 1)))

  (value, (grad_v, grad_x)) = loss("matmul")(variables, x)
  (value_a, (grad_v_a, grad_x_a)) = loss("adjoint_conv")(variables, x)
  _close(value_a, value)
  _close(grad_x_a, grad_x)
  for name in ("kernel", "bias"):
    _close(grad_v_a["params"][name], grad_v["params"][name])


def test_adjoint_conv_matches_flax_conv_transpose():
  x = jax.random.normal(jax.random.key(3), (2, 4, 3, 5))
  reference = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID")
  variables = reference.init(jax.random.key(4), x)
  ours = blocks.UpConv2x2(6, method="adjoint_conv").apply(variables, x)
  _close(ours, reference.apply(variables, x))


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 5, 7, 2)])
def test_reshaped_max_pool_matches_reduce_window_and_its_gradient(shape):
  # Distinct values: with ties the two split the gradient differently (both are gradients).
  x = jax.random.permutation(jax.random.key(5), np.prod(shape)).reshape(shape) / 7.0
  upstream = jax.random.normal(jax.random.key(6), (shape[0], shape[1] // 2, shape[2] // 2,
                                                  shape[3]))

  def pooled(method):
    return jax.value_and_grad(
        lambda x: jnp.sum(layers.max_pool_2x2("xla", x, method) * upstream))(x)

  value, grad = pooled("reshape")
  value_rw, grad_rw = pooled("reduce_window")
  _close(value, value_rw)
  np.testing.assert_array_equal(grad, grad_rw)
  with pytest.raises(ValueError, match="xla_method"):
    layers.max_pool_2x2("xla", x, "average")


def test_channel_sum_head_has_the_conv_heads_variables_and_outputs():
  x = jax.random.normal(jax.random.key(7), (2, 3, 4, 5)).astype(jnp.bfloat16)
  kwargs = {"kernel_init": blocks.he_normal, "name": "head"}

  class Wrap(nn.Module):
    method: str

    @nn.compact
    def __call__(self, x):
      return layers.logit_head("xla", 1, self.method, **kwargs)(x.astype(jnp.float32))

  conv_vars = Wrap("conv").init(jax.random.key(8), x)
  sum_vars = Wrap("channel_sum").init(jax.random.key(8), x)
  jax.tree.map(np.testing.assert_array_equal, conv_vars, sum_vars)
  conv_vars = jax.tree.map(lambda v: v + 0.25, conv_vars)
  out = Wrap("channel_sum").apply(conv_vars, x)
  assert out.dtype == jnp.float32 and out.shape == (2, 3, 4, 1)
  _close(out, Wrap("conv").apply(conv_vars, x))


def test_unet_xla_levers_change_speed_only():
  """The UNet with every lever against the first GPU run's formulation: one train-mode
  forward and backward, the same loss and gradients."""
  images = jax.random.uniform(jax.random.key(9), (2, 16, 16, 3))
  first_run = UNet(num_classes=1, features=4, depth=2, conv_impl="xla",
                   upsample_impl="matmul", pool_impl="reduce_window", head_impl="conv")
  levers = first_run.clone(upsample_impl="adjoint_conv", pool_impl="reshape",
                           head_impl="channel_sum")
  variables = first_run.init(jax.random.key(10), images)
  jax.tree.map(np.testing.assert_array_equal, variables, levers.init(jax.random.key(10), images))

  def loss_and_grads(model):
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"])
      return jnp.mean(jax.nn.softplus(logits))
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  value, grads = loss_and_grads(first_run)
  value_l, grads_l = loss_and_grads(levers)
  _close(value_l, value)
  jax.tree.map(lambda a, b: _close(a, b, 1e-4), grads_l, grads)
