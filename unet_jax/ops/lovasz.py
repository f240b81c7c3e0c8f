"""The sort half of the Lovasz losses on the native CPU kernel (csrc/lovasz.cc).

XLA:CPU's sort is slow enough (about 140 ms for a TGS batch of 32 x 128 x 128 pixels) to cost
more than the rest of a small U-Net's train step; the native kernel takes a few milliseconds.
Elsewhere (GPU, TPU, no native build) unet_jax.losses sorts with XLA as before.
"""

import jax
import jax.numpy as jnp

from unet_jax.ops import kernels, library


def available() -> bool:
  """True when the kernel can run: the CPU backend and a loadable native build."""
  return jax.default_backend() == "cpu" and library.unavailable_reason() is None


def _weights(errors, targets):
  out = jax.ShapeDtypeStruct(errors.shape, jnp.float32)
  return kernels._call("unet_lovasz_weights", out, errors, targets)  # pylint: disable=protected-access


_weights_sharded = kernels._sharded_over_batch(  # pylint: disable=protected-access
    _weights, batched_args=(0, 1), summed_results=(), rule="b n, b n -> b n")


def pixel_weights(errors, targets):
  """Per row of (rows, n) float32: each pixel's Lovasz-extension gradient at its rank by
  decreasing error (ties by position), so that the row's Lovasz loss is
  sum(errors * weights). Pixels that must not count: error -inf and target 0. No gradient
  flows through the weights (they are piecewise constant in the errors)."""
  errors = jax.lax.stop_gradient(errors.astype(jnp.float32))
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  return _weights_sharded(errors, targets)
