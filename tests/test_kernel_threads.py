"""A cached oneDNN primitive runs on any thread, as XLA calls the handlers from its pool.

With oneDNN's default scratchpad (one per thread, sized when a primitive is created), a
primitive created on one thread and run on another used that thread's scratchpad, sized for
other primitives: the GEMM (im2col) weight gradients oneDNN picks on AVX2-only CPUs then
wrote past it and crashed the process (ResNet-34 U-Net tests, under load).
"""

import threading

import jax
import numpy as np
import pytest

from benchmarks.kernels import conv_layers
from unet_jax.ops import library

pytestmark = pytest.mark.skipif(library.unavailable_reason() is not None,
                                reason=f"native kernels: {library.unavailable_reason()}")

# n h w c kh kw o oh ow sh sw pt pb pl pr. The deep 3x3 layers of a ResNet-34 encoder on a
# small image: oneDNN computes their weight gradient with im2col + GEMM on AVX2 (a big
# scratchpad), with its own JIT kernels elsewhere. The small one is the same kind, smaller.
BIG = (8, 2, 2, 512, 3, 3, 512, 2, 2, 1, 1, 1, 1, 1, 1)
SMALL = (1, 1, 1, 64, 3, 3, 64, 1, 1, 1, 1, 1, 1, 1, 1)


def _operands(dims, seed):
  n, h, w, c, _, _, o, oh, ow = dims[:9]
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, h, w, c)).astype(np.float32),
          rng.normal(size=(n, oh, ow, o)).astype(np.float32))


def _onednn_weight_gradient(dims, x, dy):
  """oneDNN's weight gradient (primitive 2), on the calling thread."""
  n, h, w, c, kh, kw, o, _, _, sh, sw, pt, pb, pl, pr = dims
  layer = conv_layers.layer_spec((n, h, w, c), (kh, kw, c, o), (sh, sw), ((pt, pb), (pl, pr)))
  _, dw = conv_layers.direct_pass(layer, 2, "fp32")(x, dy)
  return dw


def _xla_weight_gradient(dims, x, dy):
  _, _, _, c, kh, kw, o, _, _, sh, sw, pt, pb, pl, pr = dims

  def conv(kernel):
    return jax.lax.conv_general_dilated(x, kernel, (sh, sw), ((pt, pb), (pl, pr)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return np.asarray(jax.vjp(conv, np.zeros((kh, kw, c, o), np.float32))[1](dy)[0])


def _on_a_new_thread(fn):
  result = []
  thread = threading.Thread(target=lambda: result.append(fn()))
  thread.start()
  thread.join()
  assert result, "the thread raised"
  return result[0]


def test_a_primitive_created_on_one_thread_runs_on_another():
  big, small = _operands(BIG, 0), _operands(SMALL, 1)
  # Thread 1 creates and caches the big primitive. Thread 2 creates a small one (its own
  # scratchpad, in library mode, sized for that) and then runs the cached big one.
  first = _on_a_new_thread(lambda: _onednn_weight_gradient(BIG, *big))
  second_small, second_big = _on_a_new_thread(
      lambda: (_onednn_weight_gradient(SMALL, *small), _onednn_weight_gradient(BIG, *big)))
  for dims, operands, grad in [(BIG, big, first), (SMALL, small, second_small),
                               (BIG, big, second_big)]:
    expected = _xla_weight_gradient(dims, *operands)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(grad / scale, expected / scale, atol=1e-4)
