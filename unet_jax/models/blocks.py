"""Building blocks shared by the U-Net variants (NHWC, flax.linen)."""

import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.ops import kernels, layers

Dtype = Any
Padding = Literal["SAME", "VALID"]

# He-normal (fan-in, untruncated normal) init for convolutions followed by ReLU.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Dropout(nn.Module):
  """nn.Dropout drawing two 16-bit uniforms from each 32-bit threefry word.

  Threefry bits are most of dropout's cost on XLA:CPU (a 32x128x128x16 mask: 96 ms, 44 ms
  packed); the masks are Bernoulli(1 - rate) to 1/65536 and, drawn in x's shape with the
  channel pairs last, do not depend on how the batch is sharded. Odd channel counts use
  nn.Dropout.
  """

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    if x.shape[-1] % 2:
      return nn.Dropout(self.rate, deterministic=False)(x)
    words = jax.random.bits(self.make_rng("dropout"), x.shape[:-1] + (x.shape[-1] // 2,),
                            jnp.uint32)
    uniforms = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(x.shape)
    threshold = round(self.rate * 65536)
    keep_prob = 1.0 - threshold / 65536
    return jnp.where(uniforms >= threshold, x / jnp.asarray(keep_prob, x.dtype),
                     jnp.zeros_like(x))


class ConvBNReLU(nn.Module):
  """3x3 conv -> optional BatchNorm -> ReLU. Convs are bias-free when normalised.

  conv_impl: 'xla' (flax's layers) or 'onednn' (unet_jax.ops: the convolution on oneDNN,
  BatchNorm + ReLU fused); same variables either way. conv_algo (onednn): direct |
  winograd | auto (unet_jax.ops.winograd).
  """

  features: int
  padding: Padding = "SAME"
  norm: Literal["batch", "none"] = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  conv_algo: str = "direct"

  @nn.compact
  def __call__(self, x, train: bool):
    use_bn = self.norm == "batch"
    x = layers.conv(self.conv_impl, self.features, (3, 3), self.conv_algo, padding=self.padding,
                    use_bias=not use_bn, kernel_init=he_normal, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="Conv_0")(x)
    if use_bn:
      # Statistics and scale/shift in float32 whatever the compute dtype.
      return layers.batch_norm_relu(self.conv_impl, x, train, dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="BatchNorm_0")
    return nn.relu(x)


class DoubleConv(nn.Module):
  """Two ConvBNReLU layers: the unit every U-Net level is made of; with
  `squeeze_excitation`, its output channels are gated by SqueezeExcitation."""

  features: int
  padding: Padding = "SAME"
  norm: Literal["batch", "none"] = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  squeeze_excitation: bool = False
  conv_algo: str = "direct"
  excitation: str = "channel"  # With squeeze_excitation: channel | concurrent (scSE).

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(2):
      x = ConvBNReLU(self.features, self.padding, self.norm, self.dtype, self.param_dtype,
                     self.conv_impl, self.conv_algo)(x, train)
    if self.squeeze_excitation:
      return SqueezeExcitation(impl=self.conv_impl, spatial=self.excitation == "concurrent",
                               name="se")(x)
    return x


class DenseParams(nn.Module):
  """The kernel and bias of an nn.Dense (same names, shapes and initialisers), for a layer
  applied as a pure function of them."""

  features: int

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


def excitation_gate(means, params):
  """The gate of squeeze-excitation from per-sample channel means (float32): Dense, ReLU,
  Dense, sigmoid."""
  (reduce_kernel, reduce_bias), (expand_kernel, expand_bias) = params
  hidden = nn.relu(jnp.dot(means, reduce_kernel) + reduce_bias)
  return nn.sigmoid(jnp.dot(hidden, expand_kernel) + expand_bias)


class SqueezeExcitation(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): channels rescaled by a gate computed from their
  spatial means (two small dense layers, float32). impl 'onednn': the native per-sample
  passes of ops.kernels; else XLA. `spatial`: concurrent spatial and channel SE (scSE, Roy et
  al. 2018, the TGS Kaggle favourite): plus x times a per-pixel gate, a 1x1 convolution to
  one channel and a sigmoid (in XLA)."""

  reduction: int = 8
  impl: str = "xla"
  spatial: bool = False

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    hidden = max(1, channels // self.reduction)
    params = (DenseParams(hidden, name="reduce")(channels),
              DenseParams(channels, name="expand")(hidden))
    if self.impl == "onednn" and x.ndim == 4:
      gated = kernels.squeeze_excitation(excitation_gate, x, params)
    else:
      gate = excitation_gate(jnp.mean(x.astype(jnp.float32), axis=(1, 2)), params)
      gated = (x * gate[:, None, None, :].astype(x.dtype)).astype(x.dtype)
    if not self.spatial:
      return gated
    kernel, bias = DenseParams(1, name="spatial")(channels)
    pixel_gate = nn.sigmoid(jnp.dot(x, kernel.astype(x.dtype)) + bias.astype(x.dtype))
    return gated + x * pixel_gate


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convs with BatchNorm, identity or 1x1 shortcut; with
  `squeeze_excitation`, the residual branch is gated by SqueezeExcitation before the sum."""

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # Resolved: xla | onednn.
  squeeze_excitation: bool = False
  conv_algo: str = "direct"  # onednn: direct | winograd | auto.
  # bn2's scale starts at 0, so that the block starts as its shortcut (Goyal et al. 2017);
  # False: at 1, as torchvision's default.
  zero_init_residual: bool = True
  excitation: str = "channel"  # With squeeze_excitation: channel | concurrent (scSE).

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(layers.batch_norm_relu, self.conv_impl, train=train,
                             dtype=self.dtype)
    conv = functools.partial(layers.conv, self.conv_impl, algo=self.conv_algo, use_bias=False,
                             kernel_init=he_normal, dtype=self.dtype)
    stride = (self.stride, self.stride)
    y = conv(self.features, (3, 3), strides=stride, padding=((1, 1), (1, 1)), name="conv1")(x)
    y = norm(y, name="bn1")
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    bn2_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = norm(y, relu=False, name="bn2", scale_init=bn2_scale)
    if self.squeeze_excitation:
      y = SqueezeExcitation(impl=self.conv_impl, spatial=self.excitation == "concurrent",
                            name="se")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), strides=stride, name="downsample_conv")(x)
      x = norm(x, relu=False, name="downsample_bn")
    return nn.relu(x + y)


def _strided_conv_2x2(z, kernel):
  """The 2x2 stride-2 VALID convolution (N, 2H, 2W, F) -> (N, H, W, C), kernel (2, 2, F, C),
  whose adjoint (transpose) is the up-convolution."""
  return jax.lax.conv_general_dilated(z, kernel, (2, 2), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def up_conv_2x2_adjoint(x, kernel):
  """y[n, 2h + a, 2w + b, f] = sum_c x[n, h, w, c] kernel[a, b, f, c]: the adjoint of
  _strided_conv_2x2, so its three passes are that convolution's own: backward-data forward,
  the convolution itself for dx, backward-filter (of dy against x) for dkernel. Each is one
  NHWC cuDNN kernel on a GPU (PyTorch's ConvTranspose2d runs the same three). The custom VJP
  keeps autodiff of the lhs-dilated forward from making XLA's slow input-dilated weight
  gradient (jax-ml/jax#23783)."""
  n, h, w, _ = x.shape
  z = jax.ShapeDtypeStruct((n, 2 * h, 2 * w, kernel.shape[2]), x.dtype)
  return jax.linear_transpose(lambda z: _strided_conv_2x2(z, kernel), z)(x)[0]


def _up_conv_2x2_adjoint_fwd(x, kernel):
  return up_conv_2x2_adjoint(x, kernel), (x, kernel)


def _up_conv_2x2_adjoint_bwd(residuals, dy):
  x, kernel = residuals
  dx = _strided_conv_2x2(dy, kernel)
  dkernel = jax.linear_transpose(lambda k: _strided_conv_2x2(dy, k), kernel)(x)[0]
  return dx, dkernel


up_conv_2x2_adjoint.defvjp(_up_conv_2x2_adjoint_fwd, _up_conv_2x2_adjoint_bwd)


class UpConv2x2(nn.Module):
  """2x2 stride-2 transposed conv: the same math and parameters (kernel HWIO (2, 2, C, F),
  bias (F,)) as nn.ConvTranspose(F, (2, 2), strides=(2, 2), padding='VALID'), computed by
  `method`:

  'matmul': one matmul to 4 * features + depth-to-space. The 2x2 windows do not overlap, so
    each output pixel is one input pixel times one kernel tap; XLA:CPU runs this matmul (and
    its gradients) far faster than a transposed convolution's weight gradient.
  'adjoint_conv' (GPUs, TPUs): up_conv_2x2_adjoint, three NHWC convolution kernels. The
    matmul's depth-to-space is an activation-sized transpose each way (with the float32
    accumulator, 1.6 ms of the H200's 27.7 ms classic bf16 step, 2026-12-04 profile); XLA's
    own transposed convolution has a slow weight gradient on GPUs, up to 30x behind PyTorch
    (jax-ml/jax#23783, #31662, openxla/xla#34273).
  conv_impl 'onednn': oneDNN's strided-conv kernels (the CPU).
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  method: Literal["matmul", "adjoint_conv"] = "matmul"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", he_normal, (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    # nn.ConvTranspose does not flip its kernel: output tap (a, b) uses kernel[1-a, 1-b].
    kernel = jnp.flip(kernel, (0, 1))
    if self.conv_impl == "onednn":
      y = kernels.up_conv_2x2(x.astype(self.dtype), jnp.swapaxes(kernel, 2, 3))
      return kernels.add_bias(y, bias)
    kernel = kernel.astype(self.dtype)
    if self.method == "adjoint_conv":
      y = up_conv_2x2_adjoint(x.astype(self.dtype), jnp.swapaxes(kernel, 2, 3))
      return (y + bias.astype(self.dtype)).astype(self.dtype)
    if self.method != "matmul":
      raise ValueError(f"method must be 'matmul' or 'adjoint_conv', got {self.method!r}")
    # A float32 accumulator: XLA:CPU's bf16 dot is fast only when asked for a float32 result.
    y = jnp.einsum("nhwc,abcf->nhawbf", x.astype(self.dtype), kernel,
                   preferred_element_type=jnp.float32)
    n, h, _, w, _, f = y.shape
    return (y.reshape(n, 2 * h, 2 * w, f) + bias).astype(self.dtype)


class UpSample(nn.Module):
  """Doubles H and W and sets the channel count to `features`.

  'transpose': 2x2 stride-2 transposed conv (the paper's "up-convolution"), computed by
    UpConv2x2 (impl 'matmul' or 'adjoint_conv'; 'auto', the default: 'matmul' on a CPU,
    'adjoint_conv' elsewhere) or nn.ConvTranspose (impl 'conv_transpose'): same parameters,
    same outputs; the choice is speed only.
  'bilinear': bilinear resize (half-pixel centres, torch align_corners=False) + 1x1 conv.
  """

  features: int
  mode: Literal["transpose", "bilinear"] = "transpose"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: Literal["auto", "matmul", "adjoint_conv", "conv_transpose"] = "auto"
  conv_impl: str = "xla"  # The bilinear mode's 1x1 convolution: 'xla' or 'onednn'.

  @nn.compact
  def __call__(self, x):
    if self.mode == "transpose":
      impl = self.impl
      if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "adjoint_conv"
      if impl in ("matmul", "adjoint_conv"):
        return UpConv2x2(self.features, self.dtype, self.param_dtype, self.conv_impl, impl,
                         name="ConvTranspose_0")(x)
      return nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID",
                              kernel_init=he_normal, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="ConvTranspose_0")(x)
    if self.mode == "bilinear":
      n, h, w, c = x.shape
      x = jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")
      return layers.conv(self.conv_impl, self.features, (1, 1), kernel_init=he_normal,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="Conv_0")(x)
    raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {self.mode!r}")


def center_crop(x, height: int, width: int):
  """Crops the spatial centre of an NHWC array (the paper's cropped skip connections)."""
  top = (x.shape[1] - height) // 2
  left = (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width, :]
