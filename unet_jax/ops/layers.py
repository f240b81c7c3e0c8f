"""Flax layers that choose their kernels by `impl`: 'xla' (XLA's kernels, BatchNorm + ReLU and
max-pool with the backward passes of ops.xla_vjp), 'onednn' (unet_jax.ops.kernels) or
'xla_autodiff' (XLA, flax's nn.BatchNorm and nn.max_pool differentiated by JAX and a float32
conv head: the first GPU run's step, kept to compare against). All hold the same variables
under the same names, so a checkpoint, a ported PyTorch state_dict or an exported model does
not depend on the choice."""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.ops import kernels, library, winograd, xla_vjp

Dtype = Any
# 1x1 stride-1 convolutions with at most this many outputs (the logit heads) run as XLA dots:
# measured on the tgs head (16 -> 1 channel, 64x128x128): 15 ms forward + backward against
# oneDNN's 24 ms, whose kernels are built for many output channels.
_DOT_MAX_FEATURES = 8


XLA_AUTODIFF = "xla_autodiff"


def resolve(conv_impl: str, dtype=None) -> str:
  """'auto' | 'xla' | 'onednn' -> the implementation used here ('xla' or 'onednn') for a model
  computing in `dtype`; 'xla_autodiff' stays itself."""
  return conv_impl if conv_impl == XLA_AUTODIFF else library.resolve(conv_impl, dtype)


def _explicit_padding(padding, height, width, kernel_size, strides):
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads((height, width), kernel_size, strides, padding)
  else:
    pads = padding
  return tuple((int(lo), int(hi)) for lo, hi in pads)


class OneDNNConv(nn.Module):
  """nn.Conv's parameters and results (NHWC, HWIO kernel, optional bias) on oneDNN."""

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  algo: str = "direct"  # 3x3 stride 1, bf16/f32: direct | winograd | auto (ops/winograd.py).

  @nn.compact
  def __call__(self, x):
    kernel_size, strides = tuple(self.kernel_size), tuple(self.strides)
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    x = x.astype(self.dtype)
    if kernel_size == (1, 1) and strides == (1, 1) and self.features <= _DOT_MAX_FEATURES:
      # A per-pixel matvec (the heads): XLA's dot, with a float32 accumulator, beats oneDNN.
      y = jnp.einsum("nhwc,cf->nhwf", x, kernel[0, 0].astype(self.dtype),
                     preferred_element_type=jnp.float32).astype(self.dtype)
    else:
      pads = _explicit_padding(self.padding, x.shape[1], x.shape[2], kernel_size, strides)
      # Init computes only shapes and parameters, which no plan changes: timing its dummy
      # batch's layers for `auto` (shapes training never runs) would only cost time and logs.
      algo = "direct" if self.is_initializing() else self.algo
      plan = winograd.choose(algo, x.shape, kernel.shape, strides, pads, x.dtype)
      if plan != winograd.DIRECT:
        y = winograd.conv2d(x, kernel, pads, plan)
      else:
        y = kernels.conv2d(x, kernel, strides, pads)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = kernels.add_bias(y, bias)
    return y


class FusedBatchNorm(nn.Module):
  """nn.BatchNorm over N, H, W (momentum, epsilon, variables as flax's: params scale/bias,
  batch_stats mean/var, statistics in float32), optionally fused with the ReLU after it;
  in training, on `impl`'s kernels: 'onednn' (ops.kernels) or 'xla' (ops.xla_vjp)."""

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  relu: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros
  impl: str = "onednn"

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    x = x.astype(self.dtype)
    if self.use_running_average or self.is_initializing():
      mean, var = ra_mean.value, ra_var.value
      multiplier = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
      y = (x.astype(jnp.float32) - mean) * multiplier + bias
      return (nn.relu(y) if self.relu else y).astype(self.dtype)
    train_batch_norm = kernels.batch_norm if self.impl == "onednn" else xla_vjp.batch_norm
    y, mean, var = train_batch_norm(x, scale.astype(jnp.float32), bias.astype(jnp.float32),
                                    self.epsilon, self.relu)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def conv(impl: str, features: int, kernel_size, algo: str = "direct", **kwargs) -> nn.Module:
  """nn.Conv or its oneDNN twin; pass `name=` so both land at the same parameter path.
  `algo` (oneDNN only): direct | winograd | auto, for its 3x3 stride-1 convolutions."""
  if impl == "onednn":
    return OneDNNConv(features, tuple(kernel_size), algo=winograd.check(algo), **kwargs)
  return nn.Conv(features, tuple(kernel_size), **kwargs)


def batch_norm_relu(impl: str, x, train: bool, relu: bool = True, **kwargs):
  """BatchNorm (momentum 0.9, epsilon 1e-5, as torch's defaults) then ReLU if `relu`.

  Pass `name=` to keep the parameter path of an nn.BatchNorm (e.g. 'BatchNorm_0').
  """
  if impl != XLA_AUTODIFF:
    return FusedBatchNorm(use_running_average=not train, relu=relu, impl=impl, **kwargs)(x)
  y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kwargs)(x)
  return nn.relu(y) if relu else y


def max_pool_2x2(impl: str, x):
  """2x2 stride-2 max-pool (VALID: an odd last row or column is dropped).

  'xla': ops.xla_vjp's, the max over each window's four pixels laid out as axes of their own,
  whose gradient is one elementwise pass (nn.max_pool's, XLA's select-and-scatter, is a
  scatter kernel on a GPU: 0.9 ms of the H200's 27.7 ms classic bf16 step, 2026-12-04).
  """
  if impl == "onednn":
    return kernels.max_pool_2x2(x)
  if impl == XLA_AUTODIFF:
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  height, width = x.shape[1:3]
  return xla_vjp.max_pool_2x2(x[:, :height - height % 2, :width - width % 2])


class ChannelSumHead(nn.Module):
  """nn.Conv(features, (1, 1)) in float32 (same variables), as products summed over the
  channels: XLA fuses the upcast, product and sum into one pass over the (bfloat16)
  activations. As a float32 convolution, a GPU first wrote a float32 copy of the input and
  then ran a matrix-vector kernel (0.6 ms of the H200's classic bf16 step); for few outputs."""

  features: int
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    products = x.astype(jnp.float32)[..., None] * kernel[0, 0].astype(jnp.float32)
    return jnp.sum(products, axis=-2) + bias.astype(jnp.float32)


def logit_head(impl: str, features: int, **kwargs):
  """The float32 1x1 convolution to class logits (pass `name=`): ChannelSumHead for one
  logit on 'xla', else `conv` in float32."""
  if impl == "xla" and features == 1:
    return ChannelSumHead(features, **kwargs)
  return conv(impl, features, (1, 1), dtype=jnp.float32, **kwargs)


def concat_channels(impl: str, a, b):
  """Concatenates two NHWC maps along the channels (the U-Net's skip connections)."""
  if impl == "onednn" and a.dtype == b.dtype and a.ndim == 4:
    return kernels.concat_channels(a, b)
  return jnp.concatenate([a, b], axis=-1)
