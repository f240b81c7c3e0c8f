"""The project's oneDNN convolution kernels against PyTorch's own, in one process (quick look).

  python benchmarks/kernels/conv_kernels_vs_torch.py

torch links its own oneDNN (3.12 in torch 2.13); the project links the PyPI wheel (3.2). This
times each bf16 NHWC pass (forward, input gradient, weight gradient) of a few tgs-config and
classic layers both ways, taking turns, and prints GFLOP/s and torch's speed relative to the
project's kernels. Prints only: the step and conv-layer benchmarks hold the committed reports.
"""

import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/kernels/conv_kernels_vs_torch.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.kernels import conv_layers  # pylint: disable=wrong-import-position
from unet_jax.ops import library  # pylint: disable=wrong-import-position

# (batch, height, width, in channels, kernel size, out channels): SAME, stride 1.
SHAPES = ((32, 128, 128, 32, 3, 32), (32, 128, 128, 64, 3, 32), (32, 64, 64, 64, 3, 64),
          (32, 32, 32, 128, 3, 128), (8, 96, 128, 128, 3, 64), (8, 6, 8, 1024, 3, 1024))
PASSES = ("forward", "input_grad", "weight_grad")  # oneDNN primitive 0, 1, 2 (stride 1).
CALLS = 4  # Best of this many calls per timing; each side is timed 3 times, taking turns.


def project_pass(shape, which):
  """A callable: best seconds of CALLS calls of the project's kernel (oneDNN 3.2), called
  directly as the conv-layer benchmark calls it; also the layer's FLOPs."""
  n, h, w, c, k, o = shape
  pad = k // 2
  layer = conv_layers.layer_spec((n, h, w, c), (k, k, c, o), padding=((pad, pad), (pad, pad)),
                                 name=str(shape))
  _, host = conv_layers.make_arrays(layer, "bf16")
  call = conv_layers.direct_pass(layer, which, "bf16")
  a, b = (host[key] for key in conv_layers.OPERANDS[which])
  return (lambda: min(call(a, b)[0] for _ in range(CALLS))), layer["flops"]


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
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  print(f"{'shape (n, h, w, c, k, o)':28s} {'pass':11s} {'project':>8s} {'torch':>8s} GFLOP/s"
        "  torch speed / project")
  for shape in SHAPES:
    for which, name in enumerate(PASSES):
      (mine, flops), theirs = project_pass(shape, which), torch_pass(torch, shape, which)
      mine_s, theirs_s = [], []
      for _ in range(3):
        mine_s.append(mine())
        theirs_s.append(theirs())
      print(f"{str(shape):28s} {name:11s} {flops / min(mine_s) / 1e9:8.0f} "
            f"{flops / min(theirs_s) / 1e9:8.0f}          {min(mine_s) / min(theirs_s):.2f}",
            flush=True)


if __name__ == "__main__":
  main()
