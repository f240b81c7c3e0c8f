"""The U-Net of Ronneberger et al. (2015), with the common modern variants as options."""

import functools
from typing import Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.models.blocks import (BasicBlock, DoubleConv, Dropout, Dtype, Padding, UpSample,
                                    center_crop, he_normal)
from unet_jax.ops import layers


@functools.lru_cache(maxsize=None)
def valid_shrink(depth: int) -> int:
  """Pixels lost between input and output of a VALID-padding U-Net (184 for depth 4)."""
  return 12 * 2**depth - 8


def is_valid_input_size(size: int, depth: int) -> bool:
  """True if every pooled feature map of a VALID U-Net has an even, positive size."""
  for _ in range(depth):
    size -= 4
    if size <= 0 or size % 2:
      return False
    size //= 2
  return size - 4 > 0


def smallest_valid_input(output_size: int, depth: int) -> int:
  """Smallest VALID-mode input size whose output covers `output_size` pixels."""
  size = output_size + valid_shrink(depth)
  while not is_valid_input_size(size, depth):
    size += 1
  return size


def input_padding(height: int, width: int, depth: int, padding: Padding, overlap_tile: bool):
  """The reflect padding ((top, bottom), (left, right)) a U-Net applies to an input of this
  size and the (top, left) offset of the output crop that undoes it; (None, None) if none.

  SAME: up to the next multiple of 2**depth. VALID with overlap_tile: the paper's mirrored
  context, so the valid output covers the input. One function for the model and its PyTorch
  twin in benchmarks/.
  """
  if padding == "SAME":
    multiple = 2**depth
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
      return None, None
    top, left = pad_h // 2, pad_w // 2
    return ((top, pad_h - top), (left, pad_w - left)), (top, left)
  if padding != "VALID":
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  if not overlap_tile:
    for size in (height, width):
      if not is_valid_input_size(size, depth):
        raise ValueError(
            f"VALID U-Net of depth {depth} cannot take size {size}; the nearest that works is "
            f"{smallest_valid_input(max(size - valid_shrink(depth), 1), depth)}"
            " (or set overlap_tile=True)")
    return None, None
  pads, crop = [], []
  for size in (height, width):
    padded = smallest_valid_input(size, depth)
    out = padded - valid_shrink(depth)
    before = valid_shrink(depth) // 2 + (out - size) // 2
    pads.append((before, padded - size - before))
    crop.append((out - size) // 2)
  return tuple(pads), tuple(crop)


def _levels(value, depth: int) -> tuple[float, ...]:
  """Broadcasts a per-level setting to depth + 1 levels (the last is the bottleneck)."""
  if isinstance(value, (int, float)):
    return (float(value),) * (depth + 1)
  value = tuple(float(v) for v in value)
  if len(value) != depth + 1:
    raise ValueError(f"dropout needs {depth + 1} per-level rates (depth {depth} + bottleneck), "
                     f"got {len(value)}")
  return value


class UNet(nn.Module):
  """U-Net for NHWC images; returns float32 logits of shape (N, H, W, num_classes).

  Attributes:
    num_classes: output channels (1 for binary tasks with a sigmoid).
    features: channels of the first level; level k has features * 2**k.
    depth: number of 2x poolings (the classic U-Net has 4: 64 -> 1024 channels).
    dropout: one rate for all levels or depth + 1 per-level rates, bottleneck last.
    norm: 'batch' (bias-free convs + BatchNorm) or 'none' (convs with bias).
    upsample: 'transpose' (2x2 stride-2 up-convolution) or 'bilinear' (+ 1x1 conv).
    padding: 'SAME' or 'VALID' (the paper's unpadded convs with centre-cropped skips).
    overlap_tile: VALID only; mirror-pad the input (the paper's overlap-tile strategy) so the
      output covers the input exactly. If False, return the raw smaller VALID output.
    resize_output: VALID with overlap_tile=False only; '' keeps the raw output, 'nearest' or
      'bilinear' resizes the raw logits to the input size (pyimagesearch's F.interpolate).
    dtype: compute dtype (e.g. bfloat16); param_dtype: parameter dtype (float32).
    upsample_impl: how 'transpose' is computed: 'auto' ('matmul' on a CPU, 'adjoint_conv' on
      GPUs and TPUs), 'matmul', 'adjoint_conv' or 'conv_transpose' (blocks.UpSample);
      identical parameters and outputs.
    remat: recompute each level's convolutions in the backward pass (jax.checkpoint) to
      save activation memory; same results.
    conv_impl: 'auto' (oneDNN kernels on the CPU when built, else XLA), 'xla' or 'onednn':
      which kernels run the convolutions, BatchNorm + ReLU and max-pools; same variables.
      'xla_autodiff' (not a config choice): XLA with flax's BatchNorm and max-pool
      differentiated by JAX, a float32 conv head: the first GPU run's step (ops/layers.py).
    conv_algo: oneDNN, bfloat16 or float32 compute: 'direct', 'winograd' (F(2x2,3x3) for
      every 3x3 stride-1 convolution) or 'auto' (per layer and pass, the faster of the two as
      measured on this CPU: unet_jax.ops.winograd), or 'auto_float32' ('auto' under float32
      compute, 'direct' under bfloat16); same variables and, within rounding, same results.
    block: each level's unit: 'double_conv' (the paper's two conv-BN-ReLU) or 'residual' (a
      ResNet BasicBlock with a 1x1 projection shortcut: the Kaggle TGS Res-U-Nets; SAME
      padding and BatchNorm only).
    zero_init_residual: 'residual' only; each block's last BatchNorm scale starts at 0 (the
      block starts as its 1x1 projection shortcut) instead of 1: -0.045 +- 0.016 TGS in
      3-fold cross-validation (benchmarks/quality/tgs_recipe.md), hence off.
    squeeze_excitation: gate each level's channels by squeeze-and-excitation (after the double
      conv, or on the residual branch).
    excitation: with squeeze_excitation, 'channel' (SE) or 'concurrent' (scSE: plus a
      per-pixel gate from a 1x1 convolution; -0.007 +- 0.004 TGS in cross-validation).
    empty_head: binary only; an image-level "has foreground" logit from the pooled bottleneck
      (sown as intermediates/empty_logit, for an auxiliary loss) gates every pixel:
      p = sigmoid(pixel) * sigmoid(image), as the TGS solutions' empty-mask classifiers.
    deep_supervision: SAME only; a 1x1 head on each decoder level but the last, its logits
      resized (bilinear) to the output and sown as intermediates/deep_logits (coarsest first)
      for auxiliary losses (steps.train_step); inference output unchanged.
    hypercolumn: SAME only; the head reads every decoder level's output, the coarser ones
      resized (bilinear) to the finest and concatenated (the TGS winners' hypercolumns), not
      only the last level's.
    resize_to: (height, width) the input is resized to (bilinear) before the U-Net, the logits
      resized back to the input's size after it (TGS: 101x101 seen at 128x128); () = none.
  """

  num_classes: int = 1
  features: int = 64
  depth: int = 4
  dropout: float | Sequence[float] = 0.0
  norm: Literal["batch", "none"] = "batch"
  upsample: Literal["transpose", "bilinear"] = "transpose"
  padding: Padding = "SAME"
  overlap_tile: bool = True
  resize_output: Literal["", "nearest", "bilinear"] = ""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  upsample_impl: Literal["auto", "matmul", "adjoint_conv", "conv_transpose"] = "auto"
  remat: bool = False
  conv_impl: Literal["auto", "xla", "onednn", "xla_autodiff"] = "auto"
  conv_algo: Literal["auto", "direct", "winograd", "auto_float32"] = "direct"
  block: Literal["double_conv", "residual"] = "double_conv"
  zero_init_residual: bool = False
  squeeze_excitation: bool = False
  excitation: Literal["channel", "concurrent"] = "channel"
  empty_head: bool = False
  deep_supervision: bool = False
  hypercolumn: bool = False
  resize_to: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    if not self.resize_to:
      return self._logits(images, train)
    if len(self.resize_to) != 2 or self.padding != "SAME" or self.deep_supervision:
      raise ValueError(f"resize_to needs (height, width), padding='SAME' and no deep "
                       f"supervision, got {self.resize_to!r} and {self.padding!r}")
    size = images.shape[:1] + tuple(self.resize_to) + images.shape[3:]
    logits = self._logits(jax.image.resize(images.astype(jnp.float32), size, "bilinear"), train)
    return jax.image.resize(logits, images.shape[:3] + logits.shape[3:], "bilinear")

  def _logits(self, images, train: bool):
    """The U-Net's logits at the size of `images`."""
    height, width = images.shape[1:3]
    x, crop = self._pad_input(images.astype(self.dtype))
    x, deep_logits = self._unet(x, train)
    for logits in deep_logits:
      logits = jax.image.resize(logits, logits.shape[:1] + x.shape[1:], "bilinear")
      self.sow("intermediates", "deep_logits", _crop(logits, crop, height, width))
    if self.resize_output:
      if self.padding != "VALID" or self.overlap_tile:
        raise ValueError("resize_output needs padding='VALID' and overlap_tile=False")
      return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), self.resize_output)
    return _crop(x, crop, height, width)

  def _pad_input(self, x):
    """Reflect-pads so every level divides evenly; returns the padded input and the crop."""
    pads, crop = input_padding(x.shape[1], x.shape[2], self.depth, self.padding,
                               self.overlap_tile)
    if pads is not None:
      x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), mode="reflect")
    return x, crop

  def _level_block(self, impl: str):
    """The unit of every level: features, name= -> module(x, train)."""
    if self.block == "residual":
      if self.padding != "SAME" or self.norm != "batch":
        raise ValueError("block='residual' needs padding='SAME' and norm='batch'")
      unit, kwargs = BasicBlock, {"stride": 1, "dtype": self.dtype, "conv_impl": impl,
                                  "conv_algo": self.conv_algo,
                                  "zero_init_residual": self.zero_init_residual}
    elif self.block == "double_conv":
      unit, kwargs = DoubleConv, {"padding": self.padding, "norm": self.norm, "dtype": self.dtype,
                                  "param_dtype": self.param_dtype, "conv_impl": impl,
                                  "conv_algo": self.conv_algo}
    else:
      raise ValueError(f"block must be 'double_conv' or 'residual', got {self.block!r}")
    # remat: each level's activations are recomputed in the backward pass instead of kept,
    # trading ~1/3 more compute for memory (full-resolution Carvana on one GPU).
    unit = nn.remat(unit, static_argnums=(2,)) if self.remat else unit
    return functools.partial(unit, squeeze_excitation=self.squeeze_excitation,
                             excitation=self.excitation, **kwargs)

  def _unet(self, x, train: bool):
    dropout = _levels(self.dropout, self.depth)
    impl = layers.resolve(self.conv_impl, self.dtype)
    conv = self._level_block(impl)
    skips = []
    for level in range(self.depth):
      x = conv(self.features * 2**level, name=f"encoder_{level}")(x, train)
      x = Dropout(dropout[level], deterministic=not train)(x)
      skips.append(x)
      x = layers.max_pool_2x2(impl, x)
    x = conv(self.features * 2**self.depth, name="bottleneck")(x, train)
    x = Dropout(dropout[self.depth], deterministic=not train)(x)
    image_logit = self._empty_logit(x) if self.empty_head else None
    if self.deep_supervision and self.padding != "SAME":
      raise ValueError("deep_supervision needs padding='SAME'")
    # The deep heads run only where their logits are collected (init, training): inference and
    # exports never run them.
    deep_heads = self.deep_supervision and (self.is_initializing()
                                            or self.is_mutable_collection("intermediates"))
    if self.hypercolumn and self.padding != "SAME":
      raise ValueError("hypercolumn needs padding='SAME'")
    deep_logits, columns = [], []
    for level in reversed(range(self.depth)):
      features = self.features * 2**level
      x = UpSample(features, self.upsample, self.dtype, self.param_dtype, self.upsample_impl,
                   impl, name=f"up_{level}")(x)
      skip = center_crop(skips[level], x.shape[1], x.shape[2])
      x = layers.concat_channels(impl, skip, x)
      x = conv(features, name=f"decoder_{level}")(x, train)
      if deep_heads and level > 0:
        deep_logits.append(self._head(impl, x, f"deep_head_{level}"))
      columns.append(x)
    logits = (HypercolumnHead(self.num_classes, self.param_dtype, name="head")(columns)
              if self.hypercolumn else self._head(impl, x, "head"))
    return (logits if image_logit is None else gated_logits(logits, image_logit)), deep_logits

  def _head(self, impl: str, x, name: str):
    """A 1x1 convolution to class logits."""
    # The 1x1 head runs in float32 so logits and the loss never see bfloat16 rounding.
    return layers.logit_head(impl, self.num_classes, kernel_init=he_normal,
                             param_dtype=self.param_dtype, name=name)(x.astype(jnp.float32))

  def _empty_logit(self, bottleneck):
    """(N, 1) float32 logit that the image has any foreground, from the pooled bottleneck."""
    if self.num_classes != 1:
      raise ValueError(f"empty_head needs num_classes=1 (binary), got {self.num_classes}")
    pooled = jnp.mean(bottleneck.astype(jnp.float32), axis=(1, 2))
    image_logit = nn.Dense(1, dtype=jnp.float32, param_dtype=self.param_dtype,
                           name="empty_head")(pooled)
    self.sow("intermediates", "empty_logit", image_logit)
    return image_logit


class HypercolumnHead(nn.Module):
  """The 1x1 head over every decoder level (coarsest first), each resized (bilinear) to the
  finest: the head of their concatenation, computed as the sum of each level's own 1x1 logits
  resized, since resizing and a 1x1 convolution commute. Same parameters ('kernel' rows in
  level order, 'bias') and function, without a full-resolution tensor of every level's
  channels (it doubled the tgs step)."""

  num_classes: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, columns):
    channels = [c.shape[-1] for c in columns]
    kernel = self.param("kernel", he_normal, (1, 1, sum(channels), self.num_classes),
                        self.param_dtype).astype(jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,), self.param_dtype)
    shape = columns[-1].shape[:3] + (self.num_classes,)
    logits, start = bias.astype(jnp.float32), 0
    for column, width in zip(columns, channels):
      level = jnp.einsum("nhwc,ck->nhwk", column.astype(jnp.float32),
                         kernel[0, 0, start:start + width])
      start += width
      logits = logits + (level if level.shape == shape else
                         jax.image.resize(level, shape, "bilinear"))
    return logits


def _crop(x, crop, height: int, width: int):
  """The (height, width) window at crop = (top, left) of NHWC x; x itself if crop is None."""
  if crop is None:
    return x
  top, left = crop
  return x[:, top:top + height, left:left + width]


def gated_logits(pixel_logits, image_logits):
  """logit(sigmoid(pixel) * sigmoid(image)) for pixel logits (N, H, W, 1) and image logits
  (N, 1), computed in log space; capped near logit 13.8 (p = 1 - 1e-6) to stay finite."""
  log_p = jax.nn.log_sigmoid(pixel_logits) + jax.nn.log_sigmoid(image_logits)[:, None, None, :]
  log_p = jnp.minimum(log_p, -1e-6)
  # log(1 - p): expm1 near p = 1, log1p elsewhere (both finite under the cap).
  log_not_p = jnp.where(log_p > -0.6931, jnp.log(-jnp.expm1(log_p)), jnp.log1p(-jnp.exp(log_p)))
  return log_p - log_not_p


def tiny_unet(num_classes: int = 1, **overrides) -> UNet:
  """A 4-channel, depth-2 U-Net that compiles and runs in well under a second (for tests)."""
  return UNet(**{"num_classes": num_classes, "features": 4, "depth": 2, **overrides})
