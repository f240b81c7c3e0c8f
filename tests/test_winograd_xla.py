"""benchmarks/kernels/winograd_xla.py: the JAX Winograd F(2x2,3x3) computes the convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import needs_onednn_bf16
from benchmarks.kernels import winograd_xla
from unet_jax.ops import library

pytestmark = pytest.mark.skipif(library.unavailable_reason() is not None,
                                reason=f"native kernels: {library.unavailable_reason()}")


def _reference(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


@pytest.mark.parametrize("shape", [(1, 7, 9, 5, 6), (3, 6, 8, 16, 4)])
def test_float32_winograd_is_the_convolution_and_its_gradients(shape):
  n, h, w, c, o = shape
  x = jax.random.normal(jax.random.key(0), (n, h, w, c), jnp.float32)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, c, o), jnp.float32)
  target = jax.random.normal(jax.random.key(2), (n, h, w, o), jnp.float32)
  np.testing.assert_allclose(jax.jit(winograd_xla.winograd_conv)(x, kernel),
                             _reference(x, kernel), rtol=1e-4, atol=1e-4)
  loss = lambda conv: jax.jit(jax.grad(lambda x, k: jnp.vdot(conv(x, k), target),
                                       argnums=(0, 1)))
  for got, want in zip(loss(winograd_xla.winograd_conv)(x, kernel), loss(_reference)(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@needs_onednn_bf16
def test_bf16_errors_stay_within_three_times_the_direct_kernels():
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 10, 64), jnp.float32) / np.sqrt(90)
  x = jax.random.normal(jax.random.key(0), (2, 6, 10, 10), jnp.bfloat16)
  errors = winograd_xla.relative_errors(x, kernel)
  for direct, winograd in zip(errors["direct"], errors["winograd"]):
    assert 0 < winograd < max(3 * direct, 1e-3) and winograd < 2e-2


@needs_onednn_bf16
def test_a_layer_row_and_its_report(tmp_path):
  layer = {"name": "tiny", "x": (2, 4, 6, 8), "w": (3, 3, 8, 16)}
  row = winograd_xla.time_layer(layer, rounds=1)
  assert row["speedup_fwd"] > 0 and row["speedup_train"] > 0
  report = {"preset": "tiny", "device": {"name": "cpu"}, "date": "today", "rounds": 1,
            "layers": [row], "verdict": "v"}
  table = winograd_xla.markdown(report)
  assert "| tiny | 2x4x6x8 | 8->16 |" in table and table.count("|---") == 9
