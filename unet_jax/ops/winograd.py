"""Winograd F(2x2,3x3) convolutions on the native kernels (csrc/winograd_conv.cc), and the
per-layer choice between them and oneDNN's direct convolution (`conv_algo`).

Winograd does 2.25x fewer multiplications than a direct 3x3 convolution, at the price of
transforms that read and write memory; it pays where channel counts are high and the image
small (the deep U-Net levels), where oneDNN's direct kernel is also least efficient. So
`conv_algo='auto'` times both on each candidate layer's own shape the first time it is seen
and keeps the faster, for the forward and input gradient and apart for the weight gradient
(on the AVX512-BF16 Zen 5 it wins there on most deep layers, 1.15-1.5x), as cuDNN's
benchmark mode does; the choice is cached on disk by CPU model, instruction sets, thread count,
shape and dtype, and logged. bfloat16 or float32 activations: in float32 (CPUs without native
bf16) the direct kernel is 3x slower and the transforms relatively cheaper, so Winograd wins
from 16-32 channels up (the weight gradient 1.0-2.6x from 16 channels, the rest 1.0-1.7x from
32, on a 2-core AVX2 EPYC), at float32 rounding error.
"""

import ctypes
import functools
import json
import logging
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import precision
from unet_jax.ops import kernels, library

# auto_float32: auto where the compute is float32 (there Winograd's error is float32 rounding,
# as the direct kernel's), direct under bfloat16 (there it is ~2x the direct kernel's): the
# default (configs/default.py).
ALGOS = ("auto", "direct", "winograd", "auto_float32")
# 'auto' only times layers with at least this many input and output channels: below it the
# transforms cost about what the saved multiplications do, so those stay direct without
# spending a measurement on them. bf16 (the gate report): 0.7-0.8x at 128 and 256 channels.
# float32 (2-core AVX2 EPYC, where direct float32 runs at a third of bf16's rate; the tgs
# config's layers, batch 32): the weight gradient 1.0-2.6x from 16 channels, the forward and
# input gradient 1.0-1.7x from 32 (0.7-0.8x at 16, where the timing keeps them direct); the
# 1 -> 16-channel input layer is not timed.
AUTO_MIN_CHANNELS = {"bfloat16": 256, "float32": 16}
CACHE_VARIABLE = "UNET_JAX_CACHE_DIR"  # Where conv_algo.json lives (~/.cache/unet_jax).
DTYPES = (jnp.bfloat16, jnp.float32)  # Activations the kernels take (U and V alike).


def applicable(x_shape, kernel_shape, strides, padding, dtype) -> bool:
  """Whether this convolution has a Winograd kernel: 3x3, stride 1, padding 0 or 1 on every
  side, bfloat16 or float32 activations."""
  pads = [p for pair in padding for p in pair]
  return (tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and all(p in (0, 1) for p in pads) and jnp.dtype(dtype) in DTYPES
          and len(x_shape) == 4)


# ---- The op ------------------------------------------------------------------------------

def _transform(kernel, dtype):
  """U = G g G^T of an HWIO 3x3 kernel, in the activations' `dtype`, as its two halves (taps
  0-7, 8-15), each (8, C, O): bf16 halves stay under glibc's 32 MiB mmap threshold
  (csrc/winograd_conv.cc). A float32 U takes a float32 kernel."""
  if dtype == jnp.float32:
    kernel = kernel.astype(jnp.float32)
  half = jax.ShapeDtypeStruct((8, *kernel.shape[2:]), dtype)
  call = kernels._call  # pylint: disable=protected-access
  return call("unet_winograd_kernel", (half, half), kernel)


def _conv(top_left, transpose, out_hw, x, u):
  channels = u[0].shape[1] if transpose else u[0].shape[2]
  out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, channels), x.dtype)
  return kernels._call("unet_winograd_conv", out, x, *u,  # pylint: disable=protected-access
                       padding=np.asarray(top_left, np.int64), transpose=np.int64(transpose))


def _conv_halves(top_left, transpose, out_hw, x, lo, hi):
  return _conv(top_left, transpose, out_hw, x, (lo, hi))


_sharded = kernels._sharded_over_batch  # pylint: disable=protected-access
_forward_halves = _sharded(_conv_halves, batched_args=(0,), summed_results=(),
                           static_argnums=(0, 1, 2), rule="b h w c, k c o, k c o -> b p q o")
_transposed_halves = _sharded(_conv_halves, batched_args=(0,), summed_results=(),
                              static_argnums=(0, 1, 2), rule="b p q o, k c o, k c o -> b h w c")


def _forward_sharded(top_left, out_hw, x, u):
  """The convolution of x by the kernel whose transform is u, batch-partitioned."""
  return _forward_halves(top_left, 0, out_hw, x, *u)


def _transposed_sharded(top_left, out_hw, x, u):
  """The transposed convolution (the forward's input gradient), batch-partitioned."""
  return _transposed_halves(top_left, 1, out_hw, x, *u)


def _filter_grad(top_left, kernel_shape, x, dy):
  out = jax.ShapeDtypeStruct((3, 3, *kernel_shape[2:]), jnp.float32)
  return kernels._call("unet_winograd_filter_grad", out, x, dy,  # pylint: disable=protected-access
                       padding=np.asarray(top_left, np.int64))


# Each device's weight gradient over its part of the batch, summed over devices.
_filter_grad_sharded = _sharded(_filter_grad, batched_args=(0, 1), summed_results=(0,),
                                static_argnums=(0, 1), rule="b h w c, b p q o -> k l c o")


def _output_hw(x, padding):
  (pt, pb), (pl, pr) = padding
  return x.shape[1] + pt + pb - 2, x.shape[2] + pl + pr - 2


# How one convolution runs: (forward and input gradient, weight gradient), each 'direct'
# (oneDNN's kernel) or 'winograd'.
DIRECT, WINOGRAD = ("direct", "direct"), ("winograd", "winograd")


def conv2d(x, kernel, padding, plan=WINOGRAD):
  """3x3 stride-1 NHWC x HWIO convolution of bfloat16 or float32 `x`; `kernel` float32 or
  bfloat16 (its gradient comes back in its dtype). padding ((top, bottom), (left, right)),
  each 0 or 1.
  `plan` (forward and input gradient, weight gradient): 'winograd' or 'direct' each. Winograd
  transforms the kernel once and reuses the transform for the input gradient; its weight
  gradient, for bf16 x, rounds the transformed input and output gradient to bf16 (error at
  the forward's bf16 level, where the direct kernel's is float32 accumulation of exact
  products)."""
  return _conv2d(x, kernel, padding, tuple(plan))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, padding, plan):
  y, _ = _conv2d_fwd(x, kernel, padding, plan)
  return y


def _conv2d_fwd(x, kernel, padding, plan):
  (pt, _), (pl, _) = padding
  if plan[0] == "winograd":
    u = _transform(kernel, x.dtype)
    return _forward_sharded((pt, pl), _output_hw(x, padding), x, u), (x, kernel, u)
  weights = kernels._native_weights(kernel, x.dtype)  # pylint: disable=protected-access
  return kernels._forward_sharded((1, 1), padding, x, weights), (x, kernel, None)  # pylint: disable=protected-access


def _conv2d_bwd(padding, plan, residuals, dy):
  x, kernel, u = residuals
  dy = dy.astype(x.dtype)
  (pt, _), (pl, _) = padding
  if u is not None:
    dx = _transposed_sharded((2 - pt, 2 - pl), x.shape[1:3], dy, u)
  else:
    dx = kernels._backward_data_sharded(  # pylint: disable=protected-access
        (1, 1), padding, x.shape[1:3], dy, kernels._native_weights(kernel, x.dtype))  # pylint: disable=protected-access
  if plan[1] == "winograd":
    dw = _filter_grad_sharded((pt, pl), tuple(kernel.shape), x, dy)
  else:
    dw = kernels._backward_weights_sharded(  # pylint: disable=protected-access
        (1, 1), padding, kernel.shape, x, dy)
  return dx, dw.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# ---- The per-layer choice ----------------------------------------------------------------

def check(algo: str) -> str:
  if algo not in ALGOS:
    raise ValueError(f"conv_algo must be one of {ALGOS}, got {algo!r}")
  return algo


def choose(algo: str, x_shape, kernel_shape, strides, padding, dtype) -> tuple[str, str]:
  """The plan (forward and input gradient, weight gradient), 'winograd' or 'direct' each, for
  one convolution under `algo` (auto | direct | winograd | auto_float32)."""
  if check(algo) == "auto_float32":
    algo = "auto" if jnp.dtype(dtype) == jnp.float32 else "direct"
  if algo == "direct" or not applicable(x_shape, kernel_shape, strides, padding, dtype):
    return DIRECT
  if algo == "winograd":
    return WINOGRAD
  c, o = kernel_shape[2:]
  if min(c, o) < AUTO_MIN_CHANNELS[jnp.dtype(dtype).name]:
    return DIRECT
  return _measured_choice(tuple(int(d) for d in x_shape), int(o),
                          tuple((int(a), int(b)) for a, b in padding), jnp.dtype(dtype).name)


def cache_path() -> pathlib.Path:
  root = os.environ.get(CACHE_VARIABLE) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "unet_jax")
  return pathlib.Path(root) / "conv_algo.json"


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# The instruction sets that decide which oneDNN kernel runs: CPUs of one model name ("AMD EPYC"
# on cloud VMs) differ in them, and so do their timings.
KEY_ISA_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def _key(x_shape, out_channels, padding, dtype) -> str:
  n, h, w, c = x_shape
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  pads = ",".join(str(p) for pair in padding for p in pair)
  isa = "+".join(f for f in KEY_ISA_FLAGS if f in precision.cpu_flags()) or "baseline"
  return (f"{_cpu_model()}|{isa}|{threads} threads|kernels {library.ABI_VERSION}"
          f"|{n}x{h}x{w}x{c}->{out_channels}|pad {pads}|{dtype}")


@functools.lru_cache(maxsize=None)
def _measured_choice(x_shape, out_channels, padding, dtype) -> tuple[str, str]:
  key, path = _key(x_shape, out_channels, padding, dtype), cache_path()
  try:
    table = json.loads(path.read_text())
  except (OSError, ValueError):
    table = {}
  if "filter_choice" not in table.get(key, {}):  # New, or timed before the weight gradient was.
    table[key] = time_layer(x_shape, out_channels, padding, dtype)
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(f".{os.getpid()}.tmp")
      tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
      tmp.replace(path)
    except OSError as e:
      logging.warning("conv_algo=auto: cannot cache the choice in %s (%s)", path, e)
  entry = table[key]
  logging.info("conv_algo=auto: %s: forward + input gradient direct %.2f ms, winograd %.2f ms "
               "-> %s; weight gradient direct %.2f ms, winograd %.2f ms -> %s",
               key.split("|", 4)[4], entry["direct_ms"], entry["winograd_ms"], entry["choice"],
               entry["filter_direct_ms"], entry["filter_winograd_ms"], entry["filter_choice"])
  return entry["choice"], entry["filter_choice"]


def _buffer(shape, rng, dtype):
  """Random values a native kernel can read: float32, or bfloat16 as its uint16 bits."""
  values = rng.standard_normal(shape, dtype=np.float32)
  return values if dtype == "float32" else (values.view(np.uint32) >> 16).astype(np.uint16)


def time_layer(x_shape, out_channels, padding, dtype="bfloat16", repeats: int = 5) -> dict:
  """Best-of-`repeats` milliseconds of one training step's direct and Winograd work for a
  layer with `dtype` (bfloat16 or float32) activations, and the faster of each: the forward
  and input gradient (with the direct kernel's weight reorders and Winograd's kernel
  transform), and the weight gradient."""
  lib = library.load()
  n, h, w, c = x_shape
  (pt, pb), (pl, pr) = padding
  oh, ow = h + pt + pb - 2, w + pl + pr - 2
  rng = np.random.default_rng(0)
  f32 = int(dtype == "float32")
  x, y = _buffer(x_shape, rng, dtype), _buffer((n, oh, ow, out_channels), rng, dtype)
  dx = np.empty_like(x)
  kernel = rng.standard_normal((3, 3, c, out_channels), dtype=np.float32)
  kernel_native = _buffer((3, 3, c, out_channels), np.random.default_rng(1), dtype)
  u = np.empty((16, c, out_channels), x.dtype)  # Both halves, one after the other.
  dw = np.empty((3, 3, c, out_channels), np.float32)
  ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # pylint: disable=unnecessary-lambda-assignment
  direct, winograd = lib.unet_onednn_conv_best_seconds, lib.unet_winograd_best_seconds
  filter_grad = lib.unet_winograd_filter_grad_best_seconds
  for function in (direct, winograd, filter_grad):
    function.restype = ctypes.c_double
  conv_dims = np.asarray([n, h, w, c, 3, 3, out_channels, oh, ow, 1, 1, pt, pb, pl, pr], np.int64)
  wino_dims = np.asarray([n, h, w, c, out_channels, pt, pb, pl, pr], np.int64)
  start = time.perf_counter()
  best = dict.fromkeys(("direct", "winograd", "filter_direct", "filter_winograd"), float("inf"))
  for _ in range(repeats):  # Taking turns, so a busy moment hurts both alike.
    forward = direct(ptr(conv_dims), 1 - f32, 0, 1, ptr(x), ptr(kernel_native), ptr(y))
    backward = direct(ptr(conv_dims), 1 - f32, 1, 1, ptr(y), ptr(kernel_native), ptr(dx))
    times = {"direct": forward + backward,
             "winograd": winograd(ptr(wino_dims), f32, 1, ptr(x), ptr(kernel), ptr(u), ptr(y),
                                  ptr(dx)),
             "filter_direct": direct(ptr(conv_dims), 1 - f32, 2, 1, ptr(x), ptr(y), ptr(dw)),
             "filter_winograd": filter_grad(ptr(wino_dims), f32, 1, ptr(x), ptr(y), ptr(dw))}
    if min(times.values()) < 0:
      raise library.KernelsUnavailable("a native convolution kernel failed while timing")
    best = {k: min(best[k], t) for k, t in times.items()}
  faster = lambda a, b: "winograd" if best[b] < best[a] else "direct"  # pylint: disable=unnecessary-lambda-assignment
  return {**{f"{k}_ms": round(t * 1e3, 3) for k, t in best.items()},
          "choice": faster("direct", "winograd"),
          "filter_choice": faster("filter_direct", "filter_winograd"),
          "timing_s": round(time.perf_counter() - start, 2)}
