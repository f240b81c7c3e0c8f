"""BatchNorm + ReLU and the 2x2 max-pool in plain XLA, with their backward passes written out.

Autodiff of flax's BatchNorm and of a max over each window gives the right gradients but
leaves XLA to schedule them, and on a GPU it stores what it could recompute: the H200's
classic bf16 step (2026-12-04 profile) spent 4.1 ms of 23.3 in BatchNorm's backward, whose
reduction wrote the ReLU-masked gradient out in full for the next pass to read back, and
0.3 ms writing the max-pool's window mask (one byte per input) in the forward pass. Here,
as the native CPU kernels do (ops/kernels.py), BatchNorm's backward recomputes the ReLU's
mask from what the forward kept anyway: one reduction pass and one elementwise pass over
(dy, x); the max-pool keeps each window's argmax (one byte per output) and its backward is
one elementwise pass. Same values and gradients as flax's forms (tests/test_xla_levers.py),
and plain jnp, so any sharding XLA supports applies.
"""

import functools

import jax
import jax.numpy as jnp

_AXES = (0, 1, 2)  # N, H, W of NHWC.


def _moments(x):
  """Per-channel mean and variance over N, H, W as nn.BatchNorm computes them (float32,
  E[x^2] - E[x]^2 clipped at 0)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, _AXES)
  return mean, jnp.maximum(jnp.mean(x * x, _AXES) - mean * mean, 0.0)


def affine(mean, var, scale, bias, epsilon: float):
  """BatchNorm as y = x * multiplier + shift per channel: (1/std, multiplier, shift)."""
  inv_std = jax.lax.rsqrt(var + epsilon)
  multiplier = scale * inv_std
  return inv_std, multiplier, bias - mean * multiplier


def backward_coefficients(mean, inv_std, multiplier, sum_dz, sum_dz_x, dmean, dvar, count):
  """(dscale, b, c) of BatchNorm's backward from the per-channel sums of dz (the gradient
  past the ReLU) and dz * x: dx = multiplier * dz + b * x + c, the normalisation's gradient
  plus the batch mean's and variance's own cotangents (zero in training, where they only feed
  running averages). dbias is sum_dz."""
  dscale = inv_std * (sum_dz_x - mean * sum_dz)
  b = -multiplier * inv_std * dscale / count + 2.0 * dvar / count
  c = -multiplier * sum_dz / count - b * mean + dmean / count
  return dscale, b, c


def fused_batch_norm(moments, apply, backward_sums, backward_apply, doc: str):
  """Training-mode BatchNorm over N, H, W of an NHWC x (+ ReLU), with its VJP, from four
  passes over the activations:
    moments(x) -> per-channel (mean, var), float32;
    apply(relu, x, multiplier, shift) -> y = [relu](x * multiplier + shift), in x's dtype;
    backward_sums(relu, dy, x, multiplier, shift) -> (sum dz, sum dz * x), dz being dy past
      the ReLU, whose mask they recompute from x, multiplier and shift (no y is kept);
    backward_apply(relu, dy, x, multiplier, shift, b, c) -> dx = multiplier * dz + b * x + c.
  Returns f(x, scale, bias, epsilon, relu) -> (y, batch mean, batch variance)."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def batch_norm(x, scale, bias, epsilon: float, relu: bool):
    (y, mean, var), _ = forward(x, scale, bias, epsilon, relu)
    return y, mean, var

  def forward(x, scale, bias, epsilon, relu):
    mean, var = moments(x)
    inv_std, multiplier, shift = affine(mean, var, scale, bias, epsilon)
    return (apply(relu, x, multiplier, shift), mean, var), (x, mean, inv_std, multiplier, shift)

  def backward(epsilon, relu, residuals, cotangents):
    del epsilon
    x, mean, inv_std, multiplier, shift = residuals
    dy, dmean, dvar = cotangents
    dy = dy.astype(x.dtype)
    sum_dz, sum_dz_x = backward_sums(relu, dy, x, multiplier, shift)
    dscale, b, c = backward_coefficients(mean, inv_std, multiplier, sum_dz, sum_dz_x, dmean,
                                         dvar, x.size // x.shape[-1])
    return backward_apply(relu, dy, x, multiplier, shift, b, c), dscale, sum_dz

  batch_norm.defvjp(forward, backward)
  batch_norm.__doc__ = doc
  return batch_norm


def _passed(relu: bool, x, multiplier, shift):
  """The ReLU's mask, recomputed from x with the forward's own multiplier and shift."""
  z = x.astype(jnp.float32) * multiplier + shift
  return z > 0 if relu else jnp.ones(z.shape, bool)


def _apply(relu: bool, x, multiplier, shift):
  z = x.astype(jnp.float32) * multiplier + shift
  return (jnp.maximum(z, 0.0) if relu else z).astype(x.dtype)


def _backward_sums(relu: bool, dy, x, multiplier, shift):
  dz = jnp.where(_passed(relu, x, multiplier, shift), dy.astype(jnp.float32), 0.0)
  return jnp.sum(dz, _AXES), jnp.sum(dz * x.astype(jnp.float32), _AXES)


def _backward_apply(relu: bool, dy, x, multiplier, shift, b, c):
  # Its own select, so that XLA recomputes dz here rather than storing it for this pass.
  dz_scaled = jnp.where(_passed(relu, x, multiplier, shift),
                        multiplier * dy.astype(jnp.float32), 0.0)
  return (dz_scaled + b * x.astype(jnp.float32) + c).astype(x.dtype)


batch_norm = fused_batch_norm(
    _moments, _apply, _backward_sums, _backward_apply,
    doc="""Training-mode BatchNorm over N, H, W of an NHWC x (+ ReLU if `relu`) on XLA, output
    in x's dtype. Returns (y, batch mean, batch variance), as ops.kernels.batch_norm.""")


def _windows(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c)


def _max_and_position(x):
  """Each 2x2 window's maximum and the position (0-3, row-major) of its first maximum."""
  windows = _windows(x)
  best = windows[:, :, 0, :, 0]
  position = jnp.zeros(best.shape, jnp.uint8)
  for index, (a, b) in enumerate(((0, 1), (1, 0), (1, 1)), start=1):
    value = windows[:, :, a, :, b]
    larger = value > best
    best = jnp.where(larger, value, best)
    position = jnp.where(larger, jnp.uint8(index), position)
  return best, position


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2 stride-2 max-pool of an NHWC x with even H and W; the gradient goes to each window's
  first maximum, as nn.max_pool's and PyTorch's do. The backward routes it by the position
  the forward kept (one byte per output), not by comparing x with the maximum again: XLA may
  recompute x in another fusion, rounded differently, and then no element would match."""
  return _max_and_position(x)[0]


def _max_pool_fwd(x):
  y, position = _max_and_position(x)
  return y, position


def _max_pool_bwd(position, dy):
  n, h, w, c = dy.shape
  positions = (2 * jnp.arange(2, dtype=jnp.uint8)[:, None, None, None]
               + jnp.arange(2, dtype=jnp.uint8)[:, None])  # (2, 1, 2, 1): row-major index.
  routed = position[:, :, None, :, None, :] == positions
  dx = jnp.where(routed, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
  return (dx.reshape(n, 2 * h, 2 * w, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
