"""The native CPU kernels (unet_jax.ops) compute what XLA computes: values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables, needs_onednn_bf16
from unet_jax.models import ResNetUNet, SimpleEncoderDecoder, UNet, blocks
from unet_jax.ops import kernels, layers, library

pytestmark = pytest.mark.skipif(library.unavailable_reason() is not None,
                                reason=f"native kernels: {library.unavailable_reason()}")

# (batch, height, width, in, out, kernel, stride, padding)
CONV_CASES = [
    (1, 101, 101, 1, 16, 3, 1, "SAME"),  # TGS size, one input channel.
    (8, 9, 11, 3, 64, 3, 1, "SAME"),
    (2, 13, 13, 64, 1, 3, 1, "VALID"),
    (1, 15, 9, 5, 7, 3, 2, "SAME"),
    (8, 17, 17, 6, 10, 3, 2, "VALID"),
    (2, 8, 8, 16, 1, 1, 1, "VALID"),  # A logit head.
    (2, 8, 8, 16, 32, 1, 2, "SAME"),  # A ResNet shortcut.
    (1, 22, 22, 3, 8, 7, 2, ((3, 3), (3, 3))),  # The ResNet stem.
]


def _max_relative(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _pads(case):
  _, h, w, _, _, k, s, padding = case
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads((h, w), (k, k), (s, s), padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv_pair(case, dtype):
  """(value, input gradient, kernel gradient) from oneDNN and from XLA, under jit."""
  n, h, w, c, o, k, s, _ = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, o)), jnp.float32)
  pads = _pads(case)

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (s, s), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def onednn(x, kernel):
    return kernels.conv2d(x, kernel, (s, s), pads)

  dy = jnp.asarray(rng.normal(size=xla(x, kernel).shape), dtype)  # One fixed cotangent.
  run = jax.jit(lambda f, x, kernel: (f(x, kernel), *jax.vjp(f, x, kernel)[1](dy)),
                static_argnums=0)
  return run(onednn, x, kernel), run(xla, x, kernel)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_fp32_value_and_gradients_equal_xla(case):
  ours, theirs = _conv_pair(case, jnp.float32)
  for name, a, b in zip(("value", "input gradient", "kernel gradient"), ours, theirs):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    assert _max_relative(a, b) < 1e-5, name


@needs_onednn_bf16
@pytest.mark.parametrize("case", CONV_CASES[:5], ids=str)
def test_conv_bf16_agrees_within_bf16_rounding(case):
  ours, theirs = _conv_pair(case, jnp.bfloat16)
  value, dx, dkernel = ours
  assert value.dtype == dx.dtype == jnp.bfloat16
  assert dkernel.dtype == jnp.float32  # Accumulated and returned in float32.
  for a, b in zip(ours, theirs):
    assert _max_relative(a, b) < 2e-2  # A few bf16 ulps (2**-8) after long sums.


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_matmul_weight_gradient_equals_xla(case, monkeypatch):
  """The im2col-matmul weight gradient (csrc/filter_grad_matmul.cc; by default only on the
  small deep maps of an AMX CPU), forced on every case: strides, padding, 1x1 and 7x7."""
  monkeypatch.setenv("UNET_JAX_FILTER_GRAD", "matmul")
  ours, theirs = _conv_pair(case, jnp.float32)
  assert _max_relative(ours[2], theirs[2]) < 1e-5


@needs_onednn_bf16
@pytest.mark.parametrize("case", [(8, 6, 8, 128, 128, 3, 1, "SAME"), CONV_CASES[1]], ids=str)
def test_matmul_and_direct_bf16_weight_gradients_agree(case, monkeypatch):
  """Both sum the same exact bf16 products in float32, in another order: equal to float32
  rounding, where bf16 rounding would be 2**-8."""
  grads = {}
  for algo in ("direct", "matmul"):
    monkeypatch.setenv("UNET_JAX_FILTER_GRAD", algo)
    grads[algo] = _conv_pair(case, jnp.bfloat16)[0][2]
  assert grads["matmul"].dtype == jnp.float32
  assert _max_relative(grads["matmul"], grads["direct"]) < 1e-5


@needs_onednn_bf16
@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[3]], ids=str)
def test_f32_kernel_is_rounded_to_bf16_inside_the_kernel(case):
  """bf16 activations with f32 weights (rounded inside oneDNN's reorder) give bit for bit
  what weights rounded by XLA beforehand give, in the value and both gradients."""
  n, h, w, c, o, k, s, _ = case
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, o)), jnp.float32)
  conv = lambda x, kernel: kernels.conv2d(x, kernel, (s, s), _pads(case))
  dy = jnp.asarray(rng.normal(size=conv(x, kernel).shape), jnp.bfloat16)
  run = jax.jit(lambda x, kernel: (conv(x, kernel), *jax.vjp(conv, x, kernel)[1](dy)))
  inside = run(x, kernel)
  before = run(x, kernel.astype(jnp.bfloat16))
  assert inside[2].dtype == jnp.float32 and before[2].dtype == jnp.bfloat16  # The kernel's.
  inside = (*inside[:2], inside[2].astype(jnp.bfloat16))
  for name, a, b in zip(("value", "input gradient", "kernel gradient"), inside, before):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), name)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_concat_channels_and_its_gradient_equal_xla(dtype):
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), dtype)
  b = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), dtype)
  weights = jnp.asarray(rng.normal(size=(9,)), jnp.float32)
  loss = lambda concat: lambda a, b: (concat(a, b).astype(jnp.float32) * weights).sum()
  xla = lambda a, b: jnp.concatenate([a, b], axis=-1)
  np.testing.assert_array_equal(jax.jit(kernels.concat_channels)(a, b), xla(a, b))
  ours = jax.jit(jax.grad(loss(kernels.concat_channels), (0, 1)))(a, b)
  theirs = jax.grad(loss(xla), (0, 1))(a, b)
  for mine, reference in zip(ours, theirs):
    assert mine.dtype == dtype
    np.testing.assert_array_equal(mine, reference)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
def test_batch_norm_module_matches_flax(dtype, relu):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 7, 5, 6)), dtype)
  variables = {
      "params": {"BatchNorm_0": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32),
                                 "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}},
      "batch_stats": {"BatchNorm_0": {"mean": jnp.full((6,), 0.5), "var": jnp.full((6,), 2.0)}}}
  dy = jnp.asarray(rng.normal(size=x.shape), dtype)

  def run(impl, train):
    """Output, updated running statistics, and the gradients of (params, x)."""
    module = _BN(impl=impl, train=train, relu=relu, dtype=dtype)

    def f(params, x):
      return module.apply({**variables, "params": params}, x, mutable=["batch_stats"])

    (y, mutated), pull = jax.vjp(f, variables["params"], x)
    zeros = jax.tree.map(jnp.zeros_like, mutated)
    return y, mutated["batch_stats"], pull((dy, zeros))

  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
  for train in (True, False):
    y1, stats1, grads1 = run("onednn", train)
    y0, stats0, grads0 = run("xla", train)
    assert y1.dtype == y0.dtype == dtype
    assert _max_relative(y1, y0) < tolerance
    for a, b in zip(jax.tree.leaves(stats1), jax.tree.leaves(stats0)):  # Running averages.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads0)):
      assert _max_relative(a, b) < tolerance


class _BN(nn.Module):
  impl: str
  train: bool
  relu: bool
  dtype: object

  @nn.compact
  def __call__(self, x):
    return layers.batch_norm_relu(self.impl, x, self.train, relu=self.relu, dtype=self.dtype,
                                  name="BatchNorm_0")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 5)])
def test_max_pool_and_its_gradient_equal_xla(dtype, shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  x = x.at[0, 0, 0].set(x[0, 0, 1])  # A tie: the gradient goes to the first maximum.
  y1, pull1 = jax.vjp(kernels.max_pool_2x2, x)
  y0, pull0 = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
  dy = jnp.asarray(rng.normal(size=y0.shape), dtype)
  np.testing.assert_array_equal(np.asarray(y1, np.float32), np.asarray(y0, np.float32))
  np.testing.assert_array_equal(np.asarray(pull1(dy)[0], np.float32),
                                np.asarray(pull0(dy)[0], np.float32))



# Odd sizes; a sample of 1640 rows (its sums run in two chunks); batch 8 of 64 channels.
SE_SHAPES = [(3, 5, 7, 12), (1, 40, 41, 8), (8, 4, 4, 64)]


def _squeeze_excitation(impl, x, dy, spatial=False):
  """Output and the gradients of (variables, x) of SqueezeExcitation on `impl`, under jit."""
  module = blocks.SqueezeExcitation(impl=impl, spatial=spatial)
  variables = module.init(jax.random.PRNGKey(0), x)
  y, pull = jax.jit(lambda v, x: jax.vjp(module.apply, v, x))(variables, x)
  return jax.tree.leaves((y, *pull(dy)))


@pytest.mark.parametrize("spatial", [False, True], ids=["channel", "concurrent"])
@pytest.mark.parametrize("shape", SE_SHAPES, ids=str)
def test_squeeze_excitation_and_its_gradients_equal_xla(shape, spatial):
  rng = np.random.default_rng(5)
  x, dy = (jnp.asarray(rng.normal(1.0, 2.0, size=shape), jnp.float32) for _ in range(2))
  theirs = _squeeze_excitation("xla", x, dy, spatial)
  ours = _squeeze_excitation("onednn", x, dy, spatial)
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert _max_relative(a, b) < 1e-5


@pytest.mark.parametrize("shape", SE_SHAPES, ids=str)
def test_squeeze_excitation_in_bf16_is_as_close_to_float32_as_xla(shape):
  """bf16 activations: outputs and gradients within bf16 rounding of the float32 result from
  the same inputs, and no further from it than XLA's bf16 path (which rounds the gate)."""
  rng = np.random.default_rng(6)
  x, dy = (jnp.asarray(rng.normal(1.0, 2.0, size=shape), jnp.bfloat16) for _ in range(2))
  exact = _squeeze_excitation("xla", x.astype(jnp.float32), dy.astype(jnp.float32))
  ours = _squeeze_excitation("onednn", x, dy)
  theirs = _squeeze_excitation("xla", x, dy)
  assert ours[0].dtype == ours[-1].dtype == jnp.bfloat16  # Output and input gradient.
  for mine, xla, reference in zip(ours, theirs, exact):
    error = _max_relative(mine, reference)
    assert error < 2e-2 and error <= 1.5 * _max_relative(xla, reference) + 1e-3

def test_bias_gradient_is_the_channel_sum():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=6), jnp.float32)
  dy = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  y, pull = jax.vjp(kernels.add_bias, x, bias)
  np.testing.assert_allclose(y, x + bias)
  dx, dbias = pull(dy)
  np.testing.assert_array_equal(dx, dy)
  np.testing.assert_allclose(dbias, dy.sum((0, 1, 2)), rtol=1e-5)


MODELS = {
    "unet_same": lambda impl: UNet(num_classes=2, features=4, depth=2, conv_impl=impl),
    "unet_valid_bilinear": lambda impl: UNet(num_classes=1, features=4, depth=1,
                                             padding="VALID", upsample="bilinear",
                                             conv_impl=impl),
    "unet_residual_se": lambda impl: UNet(num_classes=1, features=4, depth=2, block="residual",
                                          squeeze_excitation=True, conv_impl=impl),
    "unet_no_norm": lambda impl: UNet(num_classes=1, features=4, depth=2, norm="none",
                                      conv_impl=impl),
    "resnet18_unet": lambda impl: ResNetUNet(num_classes=1, arch="resnet18",
                                             decoder_features=(8, 8, 8, 8, 4), conv_impl=impl),
    "simple": lambda impl: SimpleEncoderDecoder(num_classes=1, features=4, depth=2,
                                                conv_impl=impl),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_train_alike_on_both_kernel_sets(name):
  """Same variables, same train-mode logits, same gradients and BatchNorm updates."""
  size = 64 if name == "resnet18_unet" else 20  # ResNet: a 2x2 map at stride 32.
  images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
  xla_model, onednn_model = MODELS[name]("xla"), MODELS[name]("onednn")
  variables = init_variables(xla_model, images)
  assert (jax.tree.structure(init_variables(onednn_model, images))
          == jax.tree.structure(variables))

  def loss(model, params):
    logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                  mutable=["batch_stats"])
    return jnp.mean(jnp.sin(logits)), (logits, updates)

  results = [jax.jit(jax.value_and_grad(loss, 1, has_aux=True), static_argnums=0)(
      model, variables["params"]) for model in (xla_model, onednn_model)]
  (_, (logits0, updates0)), grads0 = results[0]
  (_, (logits1, updates1)), grads1 = results[1]
  assert _max_relative(logits1, logits0) < 1e-4
  for a, b in zip(jax.tree.leaves((grads1, updates1)), jax.tree.leaves((grads0, updates0))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
