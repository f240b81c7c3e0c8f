"""The GPU step's XLA formulations (up-convolution as an adjoint convolution, max-pool as a
reshaped max, the one-logit head as a channel sum) compute what the first GPU run's did."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.models import UNet
from unet_jax.models import blocks
from unet_jax.ops import layers, xla_vjp


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
def test_max_pool_matches_reduce_window_and_its_gradient(shape):
  # Distinct values: with ties the two split the gradient differently (both are gradients).
  x = jax.random.permutation(jax.random.key(5), np.prod(shape)).reshape(shape) / 7.0
  upstream = jax.random.normal(jax.random.key(6), (shape[0], shape[1] // 2, shape[2] // 2,
                                                  shape[3]))

  def pooled(impl):
    return jax.value_and_grad(
        lambda x: jnp.sum(layers.max_pool_2x2(impl, x) * upstream))(x)

  value, grad = pooled("xla")
  value_rw, grad_rw = pooled("xla_autodiff")
  _close(value, value_rw)
  np.testing.assert_array_equal(grad, grad_rw)


def test_max_pool_gives_a_tied_windows_gradient_to_its_first_maximum():
  x = jnp.round(jax.random.normal(jax.random.key(11), (2, 4, 6, 3)))  # Many ties.
  windows = np.asarray(x).reshape(2, 2, 2, 3, 2, 3)
  assert np.sum(windows.max(axis=(2, 4), keepdims=True) == windows) > 2 * 2 * 3 * 3
  upstream = jax.random.normal(jax.random.key(12), (2, 2, 3, 3))
  value, grad = jax.value_and_grad(lambda x: jnp.sum(xla_vjp.max_pool_2x2(x) * upstream))(x)
  _close(value, np.sum(windows.max(axis=(2, 4)) * upstream))
  # Row-major first maximum of each window gets all of it, as reduce_window's gradient does.
  reference = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) * upstream))(x)
  np.testing.assert_array_equal(grad, reference)


def test_max_pool_routes_each_windows_gradient_to_one_pixel():
  x = jax.random.normal(jax.random.key(17), (1, 4, 4, 2))
  upstream = jnp.ones((1, 2, 2, 2))
  y, vjp = jax.vjp(xla_vjp.max_pool_2x2, x)
  (dx,) = vjp(upstream)
  assert np.isfinite(dx).all() and np.sum(dx != 0) == 8 and float(jnp.sum(dx)) == 8.0


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_matches_flax_batch_norm_and_its_gradients(relu, dtype):
  x = (3.0 * jax.random.normal(jax.random.key(13), (4, 5, 6, 8)) + 1.0).astype(dtype)
  upstream = jax.random.normal(jax.random.key(14), x.shape)
  scale = 1.0 + 0.1 * jax.random.normal(jax.random.key(15), (8,))
  bias = 0.1 * jax.random.normal(jax.random.key(16), (8,))

  def flax_bn(x, scale, bias):
    y, stats = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                            dtype=dtype).apply(
        {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": jnp.zeros(8), "var": jnp.ones(8)}},
        x, mutable=["batch_stats"])
    y = nn.relu(y) if relu else y
    return jnp.sum(y.astype(jnp.float32) * upstream), stats["batch_stats"]

  def ours(x, scale, bias):
    y, mean, var = xla_vjp.batch_norm(x, scale, bias, 1e-5, relu)
    assert y.dtype == dtype
    return jnp.sum(y.astype(jnp.float32) * upstream), {"mean": 0.1 * mean,
                                                       "var": 0.9 + 0.1 * var}

  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  (value, stats), grads = jax.value_and_grad(flax_bn, argnums=(0, 1, 2), has_aux=True)(
      x, scale, bias)
  (value_o, stats_o), grads_o = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2),
                                                           has_aux=True))(x, scale, bias)
  _close(value_o, value, tol)
  jax.tree.map(lambda a, b: _close(a, b, 1e-5), stats_o, stats)
  for ours_grad, flax_grad in zip(grads_o, grads):
    _close(ours_grad, flax_grad, tol)


def test_channel_sum_head_has_the_conv_heads_variables_and_outputs():
  x = jax.random.normal(jax.random.key(7), (2, 3, 4, 5)).astype(jnp.bfloat16)
  kwargs = {"kernel_init": blocks.he_normal, "name": "head"}

  class Wrap(nn.Module):
    method: str

    @nn.compact
    def __call__(self, x):
      return layers.logit_head(self.method, 1, **kwargs)(x.astype(jnp.float32))

  conv_vars = Wrap("xla_autodiff").init(jax.random.key(8), x)
  sum_vars = Wrap("xla").init(jax.random.key(8), x)
  jax.tree.map(np.testing.assert_array_equal, conv_vars, sum_vars)
  assert "ChannelSumHead" in str(Wrap("xla").tabulate(jax.random.key(8), x))
  conv_vars = jax.tree.map(lambda v: v + 0.25, conv_vars)
  out = Wrap("xla").apply(conv_vars, x)
  assert out.dtype == jnp.float32 and out.shape == (2, 3, 4, 1)
  _close(out, Wrap("xla_autodiff").apply(conv_vars, x))


@pytest.mark.parametrize("block", ["double_conv", "residual"])
def test_unet_xla_levers_change_speed_only(block):
  """The UNet with every lever against the first GPU run's formulation: one train-mode
  forward and backward, the same loss, gradients and BatchNorm statistics."""
  images = jax.random.uniform(jax.random.key(9), (2, 16, 16, 3))
  first_run = UNet(num_classes=1, features=4, depth=2, conv_impl="xla_autodiff",
                   upsample_impl="matmul", block=block)
  levers = first_run.clone(upsample_impl="adjoint_conv", conv_impl="xla")
  variables = first_run.init(jax.random.key(10), images)
  jax.tree.map(np.testing.assert_array_equal, variables, levers.init(jax.random.key(10), images))

  def loss_and_grads(model):
    def loss(params):
      logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                    mutable=["batch_stats"])
      return jnp.mean(jax.nn.softplus(logits)), updates
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

  (value, stats), grads = loss_and_grads(first_run)
  (value_l, stats_l), grads_l = loss_and_grads(levers)
  _close(value_l, value)
  # Against the whole gradient's norm: some leaves are ~0 (a BatchNorm's input bias).
  flat, flat_l = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(t)])
                  for t in (grads, grads_l))
  _close(flat_l, flat, 1e-4)
  scale = np.linalg.norm(flat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=1e-3),
               grads_l, grads)
  jax.tree.map(lambda a, b: _close(a, b, 1e-5), stats_l, stats)


def test_auto_layout_train_steps_match_the_default_layout_steps():
  """The benchmark's state-in-XLA's-layouts step (variants.compile_auto_layouts) trains the
  same: three steps, each feeding its output state to the next, equal to plain jit's."""
  import functools  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from benchmarks.step import variants  # pylint: disable=import-outside-toplevel
  from unet_jax import losses, steps  # pylint: disable=import-outside-toplevel
  model = UNet(num_classes=1, features=4, depth=2, conv_impl="xla")
  rng = np.random.default_rng(3)
  batch = jax.device_put({"image": rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32),
                          "mask": (rng.uniform(size=(2, 16, 16)) > 0.5).astype(np.uint8)})
  train_fn = functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce, ignore_index=None)
  new_state = lambda: steps.create_train_state(model, optax.adam(1e-2), batch["image"], 0)
  compiled, state, info = variants.compile_auto_layouts(train_fn, new_state(), batch)
  plain, reference = jax.jit(train_fn), new_state()
  for _ in range(3):
    state, metrics = compiled(state, batch)
    reference, reference_metrics = plain(reference, batch)
  assert int(state.step) == 3 and info["auto_layouts"]["state_arrays"] == len(
      jax.tree.leaves(reference))
  _close(metrics["loss"], reference_metrics["loss"], 1e-6)
  jax.tree.map(lambda a, b: _close(a, b, 1e-5), state.params, reference.params)
