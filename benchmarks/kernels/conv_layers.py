"""Per-layer convolution throughput: XLA, oneDNN through JAX, and oneDNN called directly.

  python benchmarks/kernels/conv_layers.py --preset tgs --dtypes bf16      # or classic; fp32 bf16
  python benchmarks/kernels/conv_layers.py --preset tgs --layers 2 --repeats 2   # quick look

Every distinct convolution of the preset's U-Net (the 3x3s, the 1x1 head, the 2x2 stride-2
up-convolutions), listed by tracing the model (conv_impl='onednn') and recording each kernel
call, is timed pass by pass (forward, input gradient, weight gradient), best of `repeats`
calls after warm-up, the implementations taking turns in every repeat:
  xla: jax.lax.conv_general_dilated (up-convolutions: the einsum the model's XLA path runs)
    and its jax.vjp pieces, jitted;
  onednn_jax: the FFI calls of unet_jax.ops.kernels, jitted;
  onednn_direct: the same oneDNN primitives on numpy buffers through ctypes (the ceiling);
  winograd_jax: unet_jax.ops.winograd's FFI calls where they apply (3x3 stride 1; the
    forward includes the kernel transform, which the input gradient reuses; the weight
    gradient from the transformed input and output gradient), elsewhere the onednn_jax
    call: what conv_algo=winograd runs. GFLOP/s count the direct convolution's FLOPs, so "effective" rates above the
    machine's peak are possible.
Writes benchmarks/results/<device-slug>/conv_layers_<preset>.{json,md,png}.
"""

import argparse
import ctypes
import datetime
import json
import os
import pathlib
import sys
import time
from unittest import mock

if __package__ in (None, ""):  # `python benchmarks/kernels/conv_layers.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernels import conv_layers_report
from benchmarks import machine
from benchmarks.step import throughput
from unet_jax import host_memory
from unet_jax.models.unet import UNet
from unet_jax.ops import kernels, library, winograd
# pylint: enable=wrong-import-position

RESULTS = throughput.RESULTS
SCHEMA_VERSION = 1
PASSES = conv_layers_report.PASSES
IMPLS = ("xla", "onednn_jax", "onednn_direct", "winograd_jax")
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# oneDNN primitive per pass (0 forward, 1 backward data, 2 backward weights) and its operands,
# in terms of the convolution x (N,H,W,C) * w (KH,KW,C,O) -> y (N,OH,OW,O). An up-convolution
# is the transpose of a stride-2 convolution: its forward is that convolution's data gradient.
_PRIMITIVE = {False: {"forward": 0, "input_grad": 1, "weight_grad": 2},
              True: {"forward": 1, "input_grad": 0, "weight_grad": 2}}
OPERANDS = {0: ("x", "w"), 1: ("y", "w"), 2: ("x", "y")}
_NO_PAD = ((0, 0), (0, 0))


def layer_spec(x, w, strides=(1, 1), padding=((1, 1), (1, 1)), transposed=False,
               name="conv", count=1, input_grad_count=None) -> dict:
  """One convolution x (N,H,W,C) * w (KH,KW,C,O) -> y; `transposed`: the layer runs its
  transpose (y-shaped input, x-shaped output), as the 2x2 up-convolution does."""
  x, w = tuple(int(d) for d in x), tuple(int(d) for d in w)
  oh, ow = kernels.conv_output_hw(x[1], x[2], w[:2], strides, padding)
  y = (x[0], oh, ow, w[3])
  kind = f"{w[0]}x{w[1]} up" if transposed else f"{w[0]}x{w[1]}"
  return {"name": name, "modules": [name], "kind": kind, "x": x, "w": w, "y": y,
          "strides": tuple(strides), "padding": tuple(tuple(p) for p in padding),
          "transposed": transposed, "count": count,
          "input_grad_count": count if input_grad_count is None else input_grad_count,
          "flops": 2 * y[0] * oh * ow * w[0] * w[1] * w[2] * w[3]}


def model_layers(preset: str) -> list[dict]:
  """The distinct oneDNN convolutions of a preset's U-Net (CPU sizes), in call order, with
  counts (the 1x1 logit head runs as an XLA dot and is not one of them).

  The first convolution's input gradient is not part of a train step (input_grad_count)."""
  spec = throughput.preset_spec(preset, "cpu")
  model = UNet(features=spec["features"], depth=spec["depth"], padding=spec["padding"],
               upsample=spec["upsample"], norm=spec["norm"], conv_impl="onednn")
  images = jax.ShapeDtypeStruct((spec["batch"], spec["height"], spec["width"],
                                 spec["in_channels"]), jnp.float32)
  calls, stack = [], []
  conv2d, up_conv = kernels.conv2d, kernels.up_conv_2x2

  def intercept(next_fun, args, kwargs, context):
    stack.append("/".join(context.module.path))
    try:
      return next_fun(*args, **kwargs)
    finally:
      stack.pop()

  def record_conv(x, kernel, strides, padding):
    calls.append(layer_spec(x.shape, kernel.shape, strides, padding, name=stack[-1]))
    return conv2d(x, kernel, strides, padding)

  def record_up(x, kernel):
    n, h, w, _ = x.shape
    calls.append(layer_spec((n, 2 * h, 2 * w, kernel.shape[2]), kernel.shape, (2, 2), _NO_PAD,
                            transposed=True, name=stack[-1]))
    return up_conv(x, kernel)

  with mock.patch.object(kernels, "conv2d", record_conv), \
       mock.patch.object(kernels, "up_conv_2x2", record_up), nn.intercept_methods(intercept):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), images)
  distinct = {}
  for index, call in enumerate(calls):
    key = tuple(call[k] for k in ("x", "w", "strides", "padding", "transposed"))
    if key not in distinct:
      distinct[key] = {**call, "modules": [], "count": 0, "input_grad_count": 0}
    layer = distinct[key]
    layer["modules"].append(call["name"])
    layer["count"] += 1
    layer["input_grad_count"] += index > 0
  return list(distinct.values())


def _xla_apply(layer):
  """The layer as XLA runs it in the model: (input, kernel) -> output."""
  if layer["transposed"]:  # UpConv2x2's matmul, kernel (2, 2, F, C) as up_conv_2x2 takes it.
    def apply(u, w):
      y = jnp.einsum("nhwc,abfc->nhawbf", u, w, preferred_element_type=jnp.float32)
      n, h, _, width, _, f = y.shape
      return y.reshape(n, 2 * h, 2 * width, f).astype(u.dtype)
    return apply
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, layer["strides"], layer["padding"], dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _xla_pass(layer, pass_name):
  """A jitted XLA piece and the names of its operands in make_arrays' dict."""
  apply = _xla_apply(layer)
  inp, out = ("y", "x") if layer["transposed"] else ("x", "y")
  if pass_name == "forward":
    return jax.jit(apply), (inp, "w")

  def input_grad(w, grad_out, primal_in):  # The primal is dead code once jitted.
    return jax.vjp(lambda a: apply(a, w), primal_in)[1](grad_out)[0]

  def weight_grad(primal_in, grad_out, w):
    return jax.vjp(lambda b: apply(primal_in, b), w)[1](grad_out)[0].astype(jnp.float32)

  if pass_name == "input_grad":
    return jax.jit(input_grad), ("w", out, inp)
  return jax.jit(weight_grad), (inp, out, "w")


def _onednn_jax_pass(layer, primitive):
  strides, padding = layer["strides"], layer["padding"]
  if primitive == 0:
    return jax.jit(lambda x, w: kernels._forward_sharded(strides, padding, x, w))  # pylint: disable=protected-access
  if primitive == 1:
    hw = layer["x"][1:3]
    return jax.jit(lambda y, w: kernels._backward_data_sharded(strides, padding, hw, y, w))  # pylint: disable=protected-access
  return jax.jit(lambda x, y: kernels._backward_weights_sharded(  # pylint: disable=protected-access
      strides, padding, layer["w"], x, y))


def _winograd_pass(layer, pass_name, dtype, arrays):
  """(jitted fn, operands) of the Winograd op for this pass, or None where it does not apply."""
  if layer["transposed"] or not winograd.applicable(layer["x"], layer["w"], layer["strides"],
                                                    layer["padding"], DTYPES[dtype]):
    return None
  (pt, _), (pl, _) = layer["padding"]
  out_hw, in_hw = tuple(layer["y"][1:3]), tuple(layer["x"][1:3])
  # pylint: disable=protected-access
  if pass_name == "forward":
    return jax.jit(lambda x, w: winograd._forward_sharded(
        (pt, pl), out_hw, x, winograd._transform(w, x.dtype))), (arrays["x"], arrays["w"])
  if pass_name == "input_grad":
    u = jax.jit(winograd._transform, static_argnums=1)(arrays["w"], arrays["y"].dtype)
    return jax.jit(lambda y, u: winograd._transposed_sharded(
        (2 - pt, 2 - pl), in_hw, y, u)), (arrays["y"], u)
  return jax.jit(lambda x, y: winograd._filter_grad_sharded(
      (pt, pl), tuple(layer["w"]), x, y)), (arrays["x"], arrays["y"])


def direct_pass(layer, primitive, dtype):
  """oneDNN on numpy buffers: (a, b) -> (best seconds of one call, output)."""
  fn = library.load().unet_onednn_conv_best_seconds
  fn.restype = ctypes.c_double
  fn.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                 ctypes.c_void_p, ctypes.c_void_p)
  (pt, pb), (pl, pr) = layer["padding"]
  dims = np.array([*layer["x"], *layer["w"][:2], layer["w"][3], *layer["y"][1:3],
                   *layer["strides"], pt, pb, pl, pr], np.int64)
  bf16 = dtype == "bf16"
  out = (_aligned_empty(layer["w"], np.float32) if primitive == 2 else
         _aligned_empty(layer["y" if primitive == 0 else "x"], np.uint16 if bf16 else np.float32))

  def call(a, b):
    seconds = fn(dims.ctypes.data, int(bf16), primitive, 1, a.ctypes.data, b.ctypes.data,
                 out.ctypes.data)
    if seconds < 0:
      raise RuntimeError(f"oneDNN error on {layer['name']} primitive {primitive}")
    return seconds, out
  return call


def _aligned_empty(shape, dtype, alignment: int = 64):
  """An uninitialised array starting on a 64-byte boundary, as XLA's buffers do."""
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _host(array):
  """A 64-byte aligned numpy copy of a JAX array (bf16 as its uint16 bit patterns)."""
  host = np.asarray(array)
  host = host.view(np.uint16) if host.dtype == jnp.bfloat16 else host
  out = _aligned_empty(host.shape, host.dtype)
  out[...] = host
  return out


def primitive_of(layer, pass_name: str) -> int:
  """The oneDNN primitive (0, 1, 2) that computes this pass of the layer as the model runs it."""
  return _PRIMITIVE[layer["transposed"]][pass_name]


def make_arrays(layer, dtype: str, seed: int = 0) -> dict:
  """Random x, w, y (the primitive's operands) in `dtype`, on the device and on the host."""
  rng = np.random.default_rng(seed)
  arrays = {k: jnp.asarray(rng.standard_normal(layer[k], np.float32), DTYPES[dtype])
            for k in ("x", "w", "y")}
  return arrays, {k: _host(v) for k, v in arrays.items()}


def pass_callables(layer, dtype: str, pass_name: str, arrays, host) -> dict:
  """{impl: () -> (seconds of one call, output)} for one pass of one layer."""
  primitive = primitive_of(layer, pass_name)
  a, b = OPERANDS[primitive]
  (xla, xla_operands), onednn = _xla_pass(layer, pass_name), _onednn_jax_pass(layer, primitive)
  direct = direct_pass(layer, primitive, dtype)

  def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out

  calls = {"xla": lambda: timed(xla, *(arrays[k] for k in xla_operands)),
           "onednn_jax": lambda: timed(onednn, arrays[a], arrays[b]),
           "onednn_direct": lambda: direct(host[a], host[b])}
  wino = _winograd_pass(layer, pass_name, dtype, arrays)
  calls["winograd_jax"] = (lambda: timed(wino[0], *wino[1])) if wino else calls["onednn_jax"]
  return calls


def time_layer(layer, dtype: str, warmup: int, repeats: int) -> dict:
  """{pass: {impl: {'seconds', 'gflops'}}}: best of `repeats`, implementations interleaved."""
  arrays, host = make_arrays(layer, dtype)
  timings = {}
  for pass_name in PASSES:
    calls = pass_callables(layer, dtype, pass_name, arrays, host)
    for call in calls.values():
      for _ in range(warmup):
        call()
    best = dict.fromkeys(IMPLS, float("inf"))
    for _ in range(repeats):
      for impl, call in calls.items():
        best[impl] = min(best[impl], call()[0])
    timings[pass_name] = {impl: {"seconds": s, "gflops": layer["flops"] / s / 1e9}
                          for impl, s in best.items()}
  return timings


def totals(layers, dtype: str) -> dict:
  """FLOP-weighted GFLOP/s of a train step's convolutions (each layer times its count)."""
  flops = {p: 0.0 for p in PASSES}
  seconds = {impl: {p: 0.0 for p in PASSES} for impl in IMPLS}
  for layer in layers:
    for p in PASSES:
      weight = conv_layers_report.step_count(layer, p)
      flops[p] += weight * layer["flops"]
      for impl in IMPLS:
        seconds[impl][p] += weight * layer["timings"][dtype][p][impl]["seconds"]
  all_flops = sum(flops.values())
  gflops = {impl: all_flops / sum(s.values()) / 1e9 for impl, s in seconds.items()}
  by_pass = {p: {impl: flops[p] / seconds[impl][p] / 1e9 if seconds[impl][p] else None
                 for impl in IMPLS} for p in PASSES}
  to_direct = gflops["onednn_jax"] / gflops["onednn_direct"]
  return {"gflops": gflops, "by_pass": by_pass, "flops": all_flops,
          "seconds": {impl: sum(s.values()) for impl, s in seconds.items()},
          "ratio_onednn_jax_to_direct": to_direct, "meets_80pct_of_direct": to_direct >= 0.8,
          "ratio_onednn_jax_to_xla": gflops["onednn_jax"] / gflops["xla"]}


def run(preset: str = "tgs", dtypes=("fp32", "bf16"), repeats: int = 5, warmup: int = 1,
        out_dir=None, max_layers=None, layers=None, host_malloc: str = "system",
        quiet: bool = False) -> dict:
  """Times every layer, writes <out_dir>/<slug>/conv_layers_<preset>.*, returns the report."""
  log = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
  device, environment = machine.detect_device(), machine.environment()
  started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
  layers = list(layers if layers is not None else model_layers(preset))[:max_layers]
  left_out = {}
  if "bf16" in dtypes and library.bf16_unavailable_reason():
    left_out["bf16"] = library.bf16_unavailable_reason()
    dtypes = tuple(d for d in dtypes if d != "bf16")
    log(f"bf16 left out: {left_out['bf16']}")
  for layer in layers:
    layer["timings"] = {}
    for dtype in dtypes:
      layer["timings"][dtype] = time_layer(layer, dtype, warmup, repeats)
      log(f"{dtype} {layer['name']:40s} " + "  ".join(
          f"{p} " + "/".join(f"{t[i]['gflops']:.0f}" for i in IMPLS)
          for p, t in layer["timings"][dtype].items()) + " GFLOP/s xla/jax/direct/winograd")
  data = {
      "schema_version": SCHEMA_VERSION, "benchmark": "conv_layers", "preset": preset,
      "model": {k: v for k, v in throughput.preset_spec(preset, "cpu").items() if k != "seed"},
      "device": device,
      "environment": {"started_utc": started.isoformat(timespec="seconds"),
                      "wall_s": time.perf_counter() - clock,
                      "loadavg_start": environment["loadavg"],
                      "loadavg_end": list(os.getloadavg()), "versions": machine.versions(),
                      "env": environment["env"], "host_malloc": host_malloc,
                      "command": " ".join(sys.argv)},
      "protocol": {"warmup_calls": warmup, "repeats": repeats, "statistic": "best of repeats",
                   "interleaved": True, "dtypes": list(dtypes), "left_out": left_out},
      "implementations": {
          "xla": "jax.lax.conv_general_dilated + jax.vjp pieces, jitted (up-conv: the "
                 "model's einsum, float32 accumulation)",
          "onednn_jax": "unet_jax.ops.kernels FFI calls (_forward/_backward_data/"
                        "_backward_weights_sharded), jitted",
          "onednn_direct": "unet_onednn_conv_best_seconds: oneDNN on numpy buffers, no JAX",
          "winograd_jax": "unet_jax.ops.winograd FFI calls (kernel transform + forward; "
                          "transposed input gradient; weight gradient) where they apply (3x3 "
                          "stride 1), else onednn_jax"},
      "layers": layers,
      "totals": {dtype: totals(layers, dtype) for dtype in dtypes},
  }
  paths = conv_layers_report.write(data, pathlib.Path(out_dir or RESULTS) / device["slug"])
  log(conv_layers_report.markdown(data))
  log(f"wrote {', '.join(str(p) for p in paths)}")
  return json.loads(json.dumps(data, default=str))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tgs", choices=("tgs", "classic"))
  parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--out-dir", default=None, help=f"default {RESULTS}")
  parser.add_argument("--layers", type=int, default=None, help="time only the first N layers")
  args = parser.parse_args(argv)
  # As the step benchmark's *_reuse_malloc variants: before the first JAX computation.
  host_memory.configure("reuse")
  reason = library.unavailable_reason()
  if reason is not None:
    print(f"conv_layers: the oneDNN kernels cannot load: {reason}")
    sys.exit(2)
  run(args.preset, args.dtypes, args.repeats, args.warmup, args.out_dir, args.layers,
      host_malloc="reuse")


if __name__ == "__main__":
  main()
