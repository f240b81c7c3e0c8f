"""The project's oneDNN convolution kernels against PyTorch's own, in one process (quick look).

  python benchmarks/conv_kernels_vs_torch.py

torch links its own oneDNN (3.12 in torch 2.13); the project links the PyPI wheel (3.2). This
times each bf16 NHWC pass (forward, input gradient, weight gradient) of a few tgs-config and
classic layers both ways, taking turns, and prints GFLOP/s and torch's speed relative to the
project's kernels. Prints only: the step and conv-layer benchmarks hold the committed reports.
"""

import ctypes
import pathlib
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/conv_kernels_vs_torch.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=wrong-import-position

from unet_jax.ops import library  # pylint: disable=wrong-import-position

# (batch, height, width, in channels, kernel size, out channels): SAME, stride 1.
SHAPES = ((32, 128, 128, 32, 3, 32), (32, 128, 128, 64, 3, 32), (32, 64, 64, 64, 3, 64),
          (32, 32, 32, 128, 3, 128), (8, 96, 128, 128, 3, 64), (8, 6, 8, 1024, 3, 1024))
PASSES = ("forward", "input_grad", "weight_grad")  # oneDNN primitive 0, 1, 2.
CALLS = 4  # Best of this many calls per timing; each side is timed 3 times, taking turns.


def _bf16_bits(shape, rng):
  """Random bf16 values as uint16 (the top half of float32)."""
  return (rng.random(shape, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def project_pass(shape, which, rng):
  """A callable: best seconds of CALLS calls of the project's kernel (oneDNN 3.2)."""
  fn = library.load().unet_onednn_conv_best_seconds
  fn.restype = ctypes.c_double
  fn.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                 ctypes.c_void_p, ctypes.c_void_p)
  n, h, w, c, k, o = shape
  pad = k // 2
  dims = np.array([n, h, w, c, k, k, o, h, w, 1, 1, pad, pad, pad, pad], np.int64)
  x, y, kernel = _bf16_bits((n, h, w, c), rng), _bf16_bits((n, h, w, o), rng), _bf16_bits(
      (k, k, c, o), rng)
  a, b, out = ((x, kernel, np.empty_like(y)), (y, kernel, np.empty_like(x)),
               (x, y, np.empty((k, k, c, o), np.float32)))[which]

  def run():
    seconds = fn(dims.ctypes.data, 1, which, CALLS, a.ctypes.data, b.ctypes.data,
                 out.ctypes.data)
    if seconds < 0:
      raise RuntimeError(f"oneDNN error on {shape}, pass {PASSES[which]}")
    return seconds
  return run


def torch_pass(torch, shape, which):
  """A callable: best seconds of CALLS calls of torch's bf16 channels_last pass."""
  n, h, w, c, k, o = shape
  cl = torch.channels_last
  x = torch.randn(n, c, h, w).to(memory_format=cl).bfloat16()
  kernel = torch.randn(o, c, k, k).bfloat16().to(memory_format=cl)
  dy = torch.randn(n, o, h, w).to(memory_format=cl).bfloat16()
  mask = [which == 1, which == 2, False]

  def run():
    best = float("inf")
    for _ in range(CALLS):
      start = time.perf_counter()
      if which == 0:
        torch.nn.functional.conv2d(x, kernel, padding=k // 2)
      else:
        torch.ops.aten.convolution_backward(dy, x, kernel, None, [1, 1], [k // 2] * 2, [1, 1],
                                            False, [0, 0], 1, mask)
      best = min(best, time.perf_counter() - start)
    return best
  return run


def main():
  import torch  # pylint: disable=import-outside-toplevel
  reason = library.unavailable_reason()
  if reason is not None:
    sys.exit(f"conv_kernels_vs_torch: the oneDNN kernels cannot load: {reason}")
  torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
  rng = np.random.default_rng(0)
  print(f"{'shape (n, h, w, c, k, o)':28s} {'pass':11s} {'project':>8s} {'torch':>8s} GFLOP/s"
        "  torch speed / project")
  for shape in SHAPES:
    n, h, w, c, k, o = shape
    flops = 2 * n * h * w * k * k * c * o
    for which, name in enumerate(PASSES):
      mine, theirs = project_pass(shape, which, rng), torch_pass(torch, shape, which)
      mine_s, theirs_s = [], []
      for _ in range(3):
        mine_s.append(mine())
        theirs_s.append(theirs())
      print(f"{str(shape):28s} {name:11s} {flops / min(mine_s) / 1e9:8.0f} "
            f"{flops / min(theirs_s) / 1e9:8.0f}          {min(mine_s) / min(theirs_s):.2f}",
            flush=True)


if __name__ == "__main__":
  main()
