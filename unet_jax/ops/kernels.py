"""Differentiable JAX ops over the native CPU kernels (see library.py).

Each op is an XLA FFI custom call inside `jax.custom_vjp`, and each custom call is wrapped in
`custom_partitioning`: with the batch sharded over devices, every device runs the kernel on
its own rows (no all-gather of activations), and the per-device partial sums (weight
gradients, BatchNorm statistics and their gradients) are added across devices, so results
are those of the global batch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from unet_jax.ops import library, xla_vjp


def _batch_axes(sharding):
  """The mesh axes a batch-major operand is split over on its axis 0 (None: not split)."""
  spec = getattr(sharding, "spec", None)
  return spec[0] if spec else None


def _sharded_over_batch(fn, *, batched_args, summed_results, rule, static_argnums=()):
  """`fn` with an SPMD rule: its `batched_args` carry the batch on axis 0 and are split like
  the first of them, the other arguments are replicated; results are split over the batch,
  except `summed_results`, which are per-device partial sums added up over the batch axes."""
  wrapped = custom_partitioning(fn, static_argnums=static_argnums)
  num_static = len(static_argnums)

  def partition(*args):
    statics, (mesh, arg_shapes, result_shape) = args[:num_static], args[num_static:]
    axes = _batch_axes(arg_shapes[batched_args[0]].sharding)

    def sharding(ndim, batched):
      spec = PartitionSpec(axes, *(None,) * (ndim - 1)) if batched and axes else PartitionSpec()
      return NamedSharding(mesh, spec)

    arg_shardings = tuple(sharding(len(a.shape), i in batched_args)
                          for i, a in enumerate(arg_shapes))
    multiple = isinstance(result_shape, (tuple, list))
    results = tuple(result_shape) if multiple else (result_shape,)
    result_shardings = tuple(sharding(len(r.shape), i not in summed_results)
                             for i, r in enumerate(results))

    def lower(*operands):
      out = fn(*statics, *operands)
      if axes is None or not summed_results:
        return out
      outs = list(out) if multiple else [out]
      for i in summed_results:
        outs[i] = jax.lax.psum(outs[i], axes)
      return tuple(outs) if multiple else outs[0]

    return mesh, lower, result_shardings if multiple else result_shardings[0], arg_shardings

  # Every factor but the batch must stay whole; Shardy wants them in order of appearance.
  factors = " ".join(rule.replace("->", " ").replace(",", " ").split()).split()
  others = tuple(f for f in dict.fromkeys(factors) if f != "b")
  reduction = ("b",) if summed_results else ()
  wrapped.def_partition(partition=partition, sharding_rule=rule, reduction_factors=reduction,
                        need_replication_factors=others,
                        infer_sharding_from_operands=_infer_batch_sharding,
                        propagate_user_sharding=None)
  return wrapped


def _infer_batch_sharding(*args):  # GSPMD (non-Shardy) propagation: results follow the batch.
  *_, mesh, arg_shapes, result_shape = args
  axes = _batch_axes(arg_shapes[0].sharding)
  def one(r):  # NHWC maps and (batch, channel) values follow the batch; per-channel sums not.
    return NamedSharding(mesh, PartitionSpec(axes, *(None,) * (len(r.shape) - 1))
                         if axes and len(r.shape) in (2, 4) else PartitionSpec())
  if isinstance(result_shape, (tuple, list)):
    return tuple(one(r) for r in result_shape)
  return one(result_shape)


def _call(target, results, *operands, **attributes):
  library.load()
  return jax.ffi.ffi_call(target, results)(*operands, **attributes)


# ---- Convolution -------------------------------------------------------------------------

def conv_output_hw(height, width, kernel_hw, strides, padding):
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = kernel_hw, strides, padding
  return (height + pt + pb - kh) // sh + 1, (width + pl + pr - kw) // sw + 1


def _conv_attributes(strides, padding):
  (pt, pb), (pl, pr) = padding
  return {"strides": np.asarray(strides, np.int64),
          "padding": np.asarray([pt, pb, pl, pr], np.int64)}


def _forward(strides, padding, x, w):
  oh, ow = conv_output_hw(x.shape[1], x.shape[2], w.shape[:2], strides, padding)
  out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, w.shape[3]), x.dtype)
  return _call("unet_conv_forward", out, x, w, **_conv_attributes(strides, padding))


def _backward_data(strides, padding, x_hw, dy, w):
  out = jax.ShapeDtypeStruct((dy.shape[0], *x_hw, w.shape[2]), dy.dtype)
  return _call("unet_conv_backward_data", out, dy, w, **_conv_attributes(strides, padding))


def _backward_weights(strides, padding, w_shape, x, dy):
  """float32 weight gradient: oneDNN's kernel, or on small maps on AMX one im2col matmul
  (csrc/filter_grad_matmul.cc; UNET_JAX_FILTER_GRAD=direct|matmul forces either)."""
  out = jax.ShapeDtypeStruct(w_shape, jnp.float32)
  return _call("unet_conv_backward_weights", out, x, dy, **_conv_attributes(strides, padding))


_forward_sharded = _sharded_over_batch(
    _forward, batched_args=(0,), summed_results=(), static_argnums=(0, 1),
    rule="b h w c, k l c o -> b p q o")
_backward_data_sharded = _sharded_over_batch(
    _backward_data, batched_args=(0,), summed_results=(), static_argnums=(0, 1, 2),
    rule="b p q o, k l c o -> b h w c")
_backward_weights_sharded = _sharded_over_batch(
    _backward_weights, batched_args=(0, 1), summed_results=(0,), static_argnums=(0, 1, 2),
    rule="b h w c, b p q o -> k l c o")


def _native_weights(kernel, dtype):
  """Weights as the kernels take them: float32 as they are (the kernel rounds them to bf16
  in its weight reorder), anything else in the activations' dtype."""
  return kernel if kernel.dtype == jnp.float32 else kernel.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, strides, padding):
  """NHWC x HWIO convolution on oneDNN. `kernel` may be float32 while `x` is bfloat16: the
  kernel rounds it to bfloat16 inside its own weight reorder (no XLA convert pass), and the
  gradient comes back in the kernel's own dtype (accumulated in float32).
  strides (sh, sw); padding ((top, bottom), (left, right))."""
  return _forward_sharded(strides, padding, x, _native_weights(kernel, x.dtype))


def _conv2d_fwd(x, kernel, strides, padding):
  return conv2d(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  dx = _backward_data_sharded(strides, padding, x.shape[1:3], dy,
                              _native_weights(kernel, x.dtype))
  dw = _backward_weights_sharded(strides, padding, kernel.shape, x, dy)
  return dx, dw.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# ---- BatchNorm (+ ReLU) -------------------------------------------------------------------

def _stats(x):
  c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
  return _call("unet_bn_stats", (c, c), x)


def _apply(relu, x, scale, shift):
  return _call("unet_bn_relu", jax.ShapeDtypeStruct(x.shape, x.dtype), x, scale, shift,
               relu=relu)


def _backward_sums(relu, dy, x, scale, shift):
  c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
  return _call("unet_bn_relu_backward_sums", (c, c), dy, x, scale, shift, relu=relu)


def _backward_apply(relu, dy, x, scale, shift, b, c):
  return _call("unet_bn_relu_backward", jax.ShapeDtypeStruct(x.shape, x.dtype), dy, x, scale,
               shift, b, c, relu=relu)


_stats_sharded = _sharded_over_batch(_stats, batched_args=(0,), summed_results=(0, 1),
                                     rule="b h w c -> c, c")
_apply_sharded = _sharded_over_batch(_apply, batched_args=(0,), summed_results=(),
                                     static_argnums=(0,), rule="b h w c, c, c -> b h w c")
_backward_sums_sharded = _sharded_over_batch(
    _backward_sums, batched_args=(0, 1), summed_results=(0, 1), static_argnums=(0,),
    rule="b h w c, b h w c, c, c -> c, c")
_backward_apply_sharded = _sharded_over_batch(
    _backward_apply, batched_args=(0, 1), summed_results=(), static_argnums=(0,),
    rule="b h w c, b h w c, c, c, c, c -> b h w c")


def _moments(x):
  """Per-channel mean and variance over N, H, W, as nn.BatchNorm computes them
  (E[x^2] - E[x]^2 in float32, clipped at 0)."""
  count = x.size // x.shape[-1]
  total, total_sq = _stats_sharded(x)
  mean = total / count
  return mean, jnp.maximum(total_sq / count - mean * mean, 0.0)


batch_norm = xla_vjp.fused_batch_norm(
    _moments, _apply_sharded, _backward_sums_sharded, _backward_apply_sharded,
    doc="""Training-mode BatchNorm over N, H, W of an NHWC x (+ ReLU if `relu`) on the native
    kernels: one pass for the statistics and one for the output; the backward recomputes the
    ReLU's mask from x (no y kept: one activation read fewer). Returns (y, batch mean, batch
    variance).""")


# ---- 2x2 max-pool -------------------------------------------------------------------------

def _pool(x):
  out = jax.ShapeDtypeStruct((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]), x.dtype)
  return _call("unet_max_pool", out, x)


def _pool_backward(x, dy):
  return _call("unet_max_pool_backward", jax.ShapeDtypeStruct(x.shape, x.dtype), x, dy)


_pool_sharded = _sharded_over_batch(_pool, batched_args=(0,), summed_results=(),
                                    rule="b h w c -> b p q c")
_pool_backward_sharded = _sharded_over_batch(_pool_backward, batched_args=(0, 1),
                                             summed_results=(), rule="b h w c, b p q c -> b h w c")


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2 stride-2 max-pool of NHWC x (odd last rows/columns dropped, as VALID pooling)."""
  return _pool_sharded(x)


def _max_pool_fwd(x):
  return max_pool_2x2(x), x


def _max_pool_bwd(x, dy):
  return (_pool_backward_sharded(x, dy.astype(x.dtype)),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ---- Skip-connection concatenation ---------------------------------------------------------

def _concat(a, b):
  out = jax.ShapeDtypeStruct((*a.shape[:-1], a.shape[-1] + b.shape[-1]), a.dtype)
  return _call("unet_concat_channels", out, a, b)


def _split(split, x):
  shapes = tuple(jax.ShapeDtypeStruct((*x.shape[:-1], c), x.dtype)
                 for c in (split, x.shape[-1] - split))
  return _call("unet_split_channels", shapes, x)


_concat_sharded = _sharded_over_batch(_concat, batched_args=(0, 1), summed_results=(),
                                      rule="b h w c, b h w d -> b h w e")
_split_sharded = _sharded_over_batch(_split, batched_args=(0,), summed_results=(),
                                     static_argnums=(0,), rule="b h w e -> b h w c, b h w d")


@jax.custom_vjp
def concat_channels(a, b):
  """jnp.concatenate([a, b], -1) of two NHWC maps of one dtype, as one native copy pass
  (XLA:CPU widens a bf16 concatenate, and the slices of its gradient, to float32)."""
  return _concat_sharded(a, b)


def _concat_channels_fwd(a, b):
  return concat_channels(a, b), a.shape[-1]


def _concat_channels_bwd(split, dy):
  return tuple(_split_sharded(split, dy))


concat_channels.defvjp(_concat_channels_fwd, _concat_channels_bwd)


# ---- 2x2 stride-2 up-convolution -----------------------------------------------------------

_NO_PADDING = ((0, 0), (0, 0))


@jax.custom_vjp
def up_conv_2x2(x, kernel):
  """The transposed convolution of a 2x2 stride-2 convolution, on oneDNN: y (N, 2H, 2W, F)
  from x (N, H, W, C), y[n, 2i + a, 2j + b] = x[n, i, j] @ kernel[a, b].T with `kernel`
  (2, 2, F, C), the HWIO kernel of the stride-2 convolution F -> C whose transpose this is.
  Its forward pass is that convolution's input gradient, and vice versa."""
  return _backward_data_sharded((2, 2), _NO_PADDING, (2 * x.shape[1], 2 * x.shape[2]), x,
                                _native_weights(kernel, x.dtype))


def _up_conv_fwd(x, kernel):
  return up_conv_2x2(x, kernel), (x, kernel)


def _up_conv_bwd(residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  dx = _forward_sharded((2, 2), _NO_PADDING, dy, _native_weights(kernel, x.dtype))
  dkernel = _backward_weights_sharded((2, 2), _NO_PADDING, kernel.shape, dy, x)
  return dx, dkernel.astype(kernel.dtype)


up_conv_2x2.defvjp(_up_conv_fwd, _up_conv_bwd)


# ---- Bias --------------------------------------------------------------------------------

@jax.custom_vjp
def add_bias(x, bias):
  """x + bias over the channels of NHWC x. The add stays in XLA (it fuses with what follows);
  the bias gradient, a sum over N, H, W, is one native pass (XLA:CPU reduces it slowly)."""
  return x + bias.astype(x.dtype)


def _add_bias_fwd(x, bias):
  return add_bias(x, bias), bias


def _add_bias_bwd(bias, dy):
  total, _ = _stats_sharded(dy)
  return dy, total.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


# ---- Squeeze-excitation --------------------------------------------------------------------

def _sample_sums(product, a, b):
  """Per-sample channel sums (N, C) of a, or of a * b if `product` (else b is not read)."""
  out = jax.ShapeDtypeStruct((a.shape[0], a.shape[-1]), jnp.float32)
  return _call("unet_sample_sums", out, a, b, product=product)


def _sample_affine(x, scale, shift):
  return _call("unet_sample_affine", jax.ShapeDtypeStruct(x.shape, x.dtype), x, scale, shift)


_sample_sums_sharded = _sharded_over_batch(_sample_sums, batched_args=(0, 1), summed_results=(),
                                           static_argnums=(0,),
                                           rule="b h w c, b h w c -> b c")
_sample_affine_sharded = _sharded_over_batch(_sample_affine, batched_args=(0, 1, 2),
                                             summed_results=(),
                                             rule="b h w c, b c, b c -> b h w c")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def squeeze_excitation(gate_fn, x, params):
  """x * gate[:, None, None, :], gate = gate_fn(per-sample channel means of x, params) (both
  float32), for NHWC x, in two native passes (the means; the gating, in float32) and two in
  the backward (the gate's gradient, sum dy * x; dx = dy * gate + dmeans / (H W)). XLA:CPU
  took ~2x as long in float32 and ~4x in bf16 (widening and narrowing each pass)."""
  return _squeeze_excitation_fwd(gate_fn, x, params)[0]


def _squeeze_excitation_fwd(gate_fn, x, params):
  means = _sample_sums_sharded(False, x, x) / (x.shape[1] * x.shape[2])
  gate, gate_vjp = jax.vjp(gate_fn, means, params)
  y = _sample_affine_sharded(x, gate, jnp.zeros_like(gate))
  return y, (x, gate, gate_vjp)


def _squeeze_excitation_bwd(gate_fn, residuals, dy):
  del gate_fn
  x, gate, gate_vjp = residuals
  dy = dy.astype(x.dtype)
  dmeans, dparams = gate_vjp(_sample_sums_sharded(True, dy, x))
  dx = _sample_affine_sharded(dy, gate, dmeans / (x.shape[1] * x.shape[2]))
  return dx, dparams


squeeze_excitation.defvjp(_squeeze_excitation_fwd, _squeeze_excitation_bwd)
