"""unet_jax.ops.winograd: the native Winograd F(2x2,3x3) convolution computes the convolution
and its gradients (bf16: value and input gradient within twice the direct bf16 kernel's error,
the weight gradient at the forward's bf16 level; float32: at float32 rounding), partitions over
devices, and conv_algo picks it per layer, pass and dtype."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables, needs_onednn_bf16, xla_flags
from configs import default
from unet_jax import models
from unet_jax.errors import ConfigError
from unet_jax.ops import kernels, library, winograd

pytestmark = pytest.mark.skipif(library.unavailable_reason() is not None,
                                reason=f"native kernels: {library.unavailable_reason()}")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (batch, height, width, in, out, padding): odd sizes, batch 1 and 8, SAME and VALID.
CASES = [
    (1, 7, 9, 5, 6, ((1, 1), (1, 1))),
    (8, 5, 6, 3, 4, ((1, 1), (1, 1))),
    (2, 8, 6, 16, 8, ((0, 0), (0, 0))),
    (1, 6, 8, 64, 128, ((1, 1), (1, 1))),  # A bottleneck-like shape: many channels, small map.
    (2, 11, 10, 8, 8, ((0, 0), (0, 0))),
    # 1368 tiles: more than one chunk of the kernels holds (>= 4 MiB of transformed tiles),
    # so they run in 2-3 chunks, the last one partial, bf16 and float32, each pass.
    (4, 36, 38, 64, 64, ((1, 1), (1, 1))),
]


def _relative(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _value_and_gradients(conv, x, kernel, dy):
  y, vjp = jax.vjp(conv, x, kernel)
  return (y, *vjp(dy.astype(y.dtype)))


def _operands(case, dtype, seed):
  """x and dy in `dtype`, a float32 kernel scaled to unit output variance, and the padding."""
  n, h, w, c, o, pads = case
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
  kernel = jnp.asarray(rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
  oh, ow = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
  dy = jnp.asarray(rng.standard_normal((n, oh, ow, o)), dtype)
  return x, kernel, dy, pads


def _reference(pads):
  """XLA's convolution at highest precision: the float32 reference."""
  return lambda x, kernel: jax.lax.conv_general_dilated(
      x, kernel, (1, 1), pads, precision="highest", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@needs_onednn_bf16
@pytest.mark.parametrize("case", CASES)
def test_value_and_gradients_within_twice_the_direct_kernels_error(case):
  x, kernel, dy, pads = _operands(case, jnp.bfloat16, seed=0)
  run = jax.jit(_value_and_gradients, static_argnums=0)
  want = run(_reference(pads), x.astype(jnp.float32), kernel, dy)
  direct = run(lambda a, b: kernels.conv2d(a, b, (1, 1), pads), x, kernel, dy)
  got = run(lambda a, b: winograd.conv2d(a, b, pads), x, kernel, dy)
  assert got[0].shape == want[0].shape and got[0].dtype == jnp.bfloat16
  assert got[1].dtype == jnp.bfloat16 and got[2].dtype == jnp.float32
  for name, g, d, r in zip(("value", "input gradient"), got[:2], direct[:2], want[:2]):
    error, direct_error = _relative(g, r), _relative(d, r)
    assert 0 < error < 2 * direct_error, (name, error, direct_error)
  # The direct weight gradient is float32 sums of exact products of the bf16 operands (~1e-7
  # here); Winograd's rounds the transformed input and output gradient to bf16: its error is
  # the forward's bf16 level, within twice the direct forward's.
  assert _relative(direct[2], want[2]) < 1e-5
  assert 0 < _relative(got[2], want[2]) < 2 * _relative(direct[0], want[0])
  # Each half of a plan on its own: direct forward with the Winograd weight gradient.
  mixed = run(lambda a, b: winograd.conv2d(a, b, pads, ("direct", "winograd")), x, kernel, dy)
  np.testing.assert_array_equal(mixed[0], direct[0])
  np.testing.assert_array_equal(mixed[1], direct[1])
  np.testing.assert_allclose(mixed[2], got[2], rtol=1e-6, atol=1e-6)


# float32 rounding through the transforms leaves ~1e-7-5e-7 relative error here (the direct
# kernel's is ~1e-7); a wrong tap, tile or edge gives O(1).
FLOAT32_TOLERANCE = 2e-6


@pytest.mark.parametrize("case", CASES)
def test_float32_value_and_gradients_at_float32_rounding(case):
  x, kernel, dy, pads = _operands(case, jnp.float32, seed=1)
  run = jax.jit(_value_and_gradients, static_argnums=0)
  want = run(_reference(pads), x, kernel, dy)
  got = run(lambda a, b: winograd.conv2d(a, b, pads), x, kernel, dy)
  assert [g.dtype for g in got] == [jnp.float32] * 3 and got[0].shape == want[0].shape
  for name, g, r in zip(("value", "input gradient", "weight gradient"), got, want):
    assert _relative(g, r) < FLOAT32_TOLERANCE, (name, _relative(g, r))
  mixed = run(lambda a, b: winograd.conv2d(a, b, pads, ("direct", "winograd")), x, kernel, dy)
  direct = run(lambda a, b: kernels.conv2d(a, b, (1, 1), pads), x, kernel, dy)
  np.testing.assert_array_equal(mixed[0], direct[0])
  np.testing.assert_allclose(mixed[2], got[2], rtol=1e-6, atol=1e-6)


@needs_onednn_bf16
def test_bfloat16_kernels_and_nan_propagate():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16).at[0, 1, 1, 0].set(jnp.nan)
  kernel = jnp.ones((3, 3, 2, 3), jnp.bfloat16)
  y = winograd.conv2d(x, kernel, ((1, 1), (1, 1)))
  assert y.dtype == jnp.bfloat16 and bool(jnp.isnan(y[0, 0, 0, 0]))
  assert not bool(jnp.isnan(y[0, 3, 3, 0]))  # Outside the NaN's 3x3 reach.


_BF16 = pytest.param(jnp.bfloat16, marks=needs_onednn_bf16, id="bfloat16")
DTYPES = [_BF16, pytest.param(jnp.float32, id="float32")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_unet_trains_alike_with_winograd_and_direct(dtype):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 24, 24, 3)), jnp.float32)
  variables = init_variables(models.UNet(features=16, depth=2), x, train=False)

  def loss_and_grads(algo):
    model = models.UNet(features=16, depth=2, dtype=dtype, conv_impl="onednn",
                        conv_algo=algo)

    def loss(params):
      y, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
      return jnp.mean(jax.nn.sigmoid(y.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  (direct_loss, direct_grads), (loss, grads) = map(loss_and_grads, ("direct", "winograd"))
  assert abs(float(loss) - float(direct_loss)) < 2e-3
  def kernel(grads):
    return grads["bottleneck"]["ConvBNReLU_1"]["Conv_0"]["kernel"]

  cosine = float(jnp.vdot(kernel(grads), kernel(direct_grads))
                 / jnp.linalg.norm(kernel(grads)) / jnp.linalg.norm(kernel(direct_grads)))
  assert cosine > 0.9


def test_choice_rules_without_measuring():
  same = ((1, 1), (1, 1))
  def choose(algo, x_shape, kernel_shape, strides=(1, 1), dtype=jnp.bfloat16):
    return winograd.choose(algo, x_shape, kernel_shape, strides, same, dtype)
  assert choose("winograd", (2, 8, 8, 4), (3, 3, 4, 4)) == winograd.WINOGRAD
  assert choose("winograd", (2, 8, 8, 4), (3, 3, 4, 4), dtype=jnp.float32) == winograd.WINOGRAD
  assert choose("winograd", (2, 8, 8, 4), (3, 3, 4, 4), dtype=jnp.float16) == winograd.DIRECT
  assert choose("winograd", (2, 8, 8, 4), (3, 3, 4, 4), strides=(2, 2)) == winograd.DIRECT
  assert choose("winograd", (2, 8, 8, 4), (1, 1, 4, 4)) == winograd.DIRECT
  assert choose("auto", (2, 8, 8, 64), (3, 3, 64, 64)) == winograd.DIRECT  # bf16 from 256.
  assert choose("auto", (2, 8, 8, 8), (3, 3, 8, 64), dtype=jnp.float32) == winograd.DIRECT
  assert choose("direct", (2, 8, 8, 512), (3, 3, 512, 512)) == winograd.DIRECT
  # auto_float32 (the config default): auto under float32, direct under bfloat16.
  assert choose("auto_float32", (2, 8, 8, 512), (3, 3, 512, 512)) == winograd.DIRECT
  assert choose("auto_float32", (2, 8, 8, 8), (3, 3, 8, 8), dtype=jnp.float32) == \
      winograd.DIRECT  # Below auto's 16 channels: no measurement.
  with pytest.raises(ValueError, match="conv_algo must be one of"):
    winograd.check("fastest")


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_times_a_layer_once_and_caches_the_choice(tmp_path, monkeypatch, dtype):
  monkeypatch.setenv(winograd.CACHE_VARIABLE, str(tmp_path))
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access
  shape, kernel = (1, 4, 4, 256), (3, 3, 256, 256)
  choice = winograd.choose("auto", shape, kernel, (1, 1), ((1, 1), (1, 1)), dtype)
  table = json.loads((tmp_path / "conv_algo.json").read_text())
  (key, entry), = table.items()
  assert "1x4x4x256->256" in key and key.endswith(jnp.dtype(dtype).name)
  assert f"|kernels {library.ABI_VERSION}|" in key  # A rebuilt, faster kernel times anew.
  assert (entry["choice"], entry["filter_choice"]) == choice
  assert min(entry[f"{k}_ms"] for k in ("direct", "winograd", "filter_direct",
                                        "filter_winograd")) > 0
  faster = lambda a, b: "winograd" if entry[f"{b}_ms"] < entry[f"{a}_ms"] else "direct"
  assert choice == (faster("direct", "winograd"), faster("filter_direct", "filter_winograd"))
  # A new process (cleared memo) reads the file instead of timing again.
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(winograd, "time_layer", lambda *a, **k: pytest.fail("timed again"))
  assert winograd.choose("auto", shape, kernel, (1, 1), ((1, 1), (1, 1)), dtype) == choice
  auto_float32 = winograd.choose("auto_float32", shape, kernel, (1, 1), ((1, 1), (1, 1)), dtype)
  assert auto_float32 == (choice if dtype == jnp.float32 else winograd.DIRECT)
  # A CPU of the same model name with other instruction sets times the layer for itself.
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access
  other_isa = "avx2" if "|avx2|" not in key else "avx512f+avx2"  # Not this CPU's.
  monkeypatch.setattr(winograd.precision, "cpu_flags",
                      lambda: frozenset(other_isa.split("+")))
  monkeypatch.setattr(winograd, "time_layer", lambda *a, **k: {
      "choice": "direct", "direct_ms": 1.0, "winograd_ms": 2.0, "filter_choice": "winograd",
      "filter_direct_ms": 2.0, "filter_winograd_ms": 1.0, "timing_s": 0.0})
  assert winograd.choose("auto", shape, kernel, (1, 1), ((1, 1), (1, 1)),
                         dtype) == ("direct", "winograd")
  keys = sorted(json.loads((tmp_path / "conv_algo.json").read_text()))
  assert len(keys) == 2 and any(f"|{other_isa}|" in k for k in keys) and key in keys
  # The other dtype is another measurement too.
  other = jnp.float32 if dtype == jnp.bfloat16 else jnp.bfloat16
  winograd.choose("auto", shape, kernel, (1, 1), ((1, 1), (1, 1)), other)
  assert len(json.loads((tmp_path / "conv_algo.json").read_text())) == 3
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access


def test_init_times_no_layer_and_the_first_step_times_each_once(tmp_path, monkeypatch):
  monkeypatch.setenv(winograd.CACHE_VARIABLE, str(tmp_path))
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access
  timed = []
  monkeypatch.setattr(winograd, "time_layer", lambda x_shape, *a, **k: timed.append(x_shape) or {
      "choice": "winograd", "direct_ms": 2.0, "winograd_ms": 1.0, "filter_choice": "direct",
      "filter_direct_ms": 1.0, "filter_winograd_ms": 2.0, "timing_s": 0.0})
  model = models.UNet(features=16, depth=1, dtype=jnp.float32, conv_impl="onednn",
                      conv_algo="auto")
  x = jnp.zeros((2, 8, 8, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  assert not timed  # The dummy batch's shapes are never trained on.
  model.apply(variables, x, train=True, mutable=["batch_stats"])
  # Each 3x3 shape with >= 16 channels in and out, once: level 0's second layer (the decoder's
  # second is the same shape), the bottleneck's two, the decoder's first (the first layer has
  # 3 input channels, below auto's minimum).
  assert sorted(timed) == [(2, 4, 4, 16), (2, 4, 4, 32), (2, 8, 8, 16), (2, 8, 8, 32)]
  winograd._measured_choice.cache_clear()  # pylint: disable=protected-access


def test_config_passes_conv_algo_and_refuses_unknown_values():
  config = default.get_config()
  config.model.conv_algo = "winograd"
  assert models.from_config(config).conv_algo == "winograd"
  config.model.conv_algo = "fastest"
  with pytest.raises(ConfigError, match="model.conv_algo='fastest' is not one of"):
    models.from_config(config)


_SHARDED = textwrap.dedent("""
    import json, sys, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from unet_jax.ops import winograd
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 6, 6, 8)), jnp.dtype(sys.argv[1]))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)
    def loss(x, k):
      return jnp.sum(winograd.conv2d(x, k, ((1, 1), (1, 1))).astype(jnp.float32) ** 2)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    one = step(x, kernel)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    ks = jax.device_put(kernel, NamedSharding(mesh, P()))
    hlo = step.lower(xs, ks).compile().as_text()
    four = step(xs, ks)
    print(json.dumps({"devices": len(jax.devices()),
                      "shard_rows": [s.data.shape[0] for s in four[1][0].addressable_shards],
                      "all_gathers": hlo.count(" all-gather("),
                      "loss": [float(one[0]), float(four[0])],
                      "dw_diff": float(jnp.max(jnp.abs(one[1][1] - four[1][1]))),
                      "dw_scale": float(jnp.max(jnp.abs(one[1][1]))),
                      "dx_equal": bool(jnp.all(one[1][0] == four[1][0]))}))
""")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sharded_over_four_devices_equals_one_device(dtype):
  env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _SHARDED, jnp.dtype(dtype).name], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 4 and result["shard_rows"] == [2, 2, 2, 2]
  assert result["all_gathers"] == 0 and result["dx_equal"]
  assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-5)
  assert result["dw_diff"] <= 1e-5 * result["dw_scale"]
