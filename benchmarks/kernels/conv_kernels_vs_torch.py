"""The project's oneDNN convolution kernels against PyTorch's own, in one process (quick look).

  python benchmarks/kernels/conv_kernels_vs_torch.py --preset tgs --dtype fp32
  python benchmarks/kernels/conv_kernels_vs_torch.py --preset quick --dtype bf16

torch links its own oneDNN (3.12 in torch 2.13); the project links the PyPI wheel (3.2). This
times each NHWC pass (forward, input gradient, weight gradient) of every distinct convolution
of a preset's U-Net (traced as benchmarks/kernels/conv_layers.py traces it; `quick`: a few
tgs-config and classic layers) both ways, taking turns, and prints GFLOP/s, torch's speed
relative to the project's kernels, and the seconds each side's convolutions take per train
step (every pass weighted by its count in the step). Prints only: the step and conv-layer
benchmarks hold the committed reports.
"""

import argparse
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/kernels/conv_kernels_vs_torch.py` anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.kernels import conv_layers  # pylint: disable=wrong-import-position
from benchmarks.kernels import conv_layers_report  # pylint: disable=wrong-import-position
from unet_jax.ops import library  # pylint: disable=wrong-import-position

# (batch, height, width, in channels, kernel size, out channels): SAME, stride 1.
QUICK_SHAPES = ((32, 128, 128, 32, 3, 32), (32, 128, 128, 64, 3, 32), (32, 64, 64, 64, 3, 64),
                (32, 32, 32, 128, 3, 128), (8, 96, 128, 128, 3, 64), (8, 6, 8, 1024, 3, 1024))
CALLS = 4  # Best of this many calls per timing; each side is timed 3 times, taking turns.


def quick_layers() -> list[dict]:
  """QUICK_SHAPES as conv_layers layer specs."""
  layers = []
  for n, h, w, c, k, o in QUICK_SHAPES:
    pad = k // 2
    layers.append(conv_layers.layer_spec((n, h, w, c), (k, k, c, o),
                                         padding=((pad, pad), (pad, pad)),
                                         name=str((n, h, w, c, k, o))))
  return layers


def project_pass(layer, primitive: int, dtype: str):
  """A callable: best seconds of CALLS calls of the project's kernel (oneDNN 3.2), called
  directly as the conv-layer benchmark calls it."""
  _, host = conv_layers.make_arrays(layer, dtype)
  call = conv_layers.direct_pass(layer, primitive, dtype)
  a, b = (host[key] for key in conv_layers.OPERANDS[primitive])
  return lambda: min(call(a, b)[0] for _ in range(CALLS))


def torch_pass(torch, layer, primitive: int, dtype: str):
  """A callable: best seconds of CALLS calls of torch's channels_last pass of the same
  convolution x * w -> y (stride and padding as the layer's)."""
  cl, kind = torch.channels_last, torch.bfloat16 if dtype == "bf16" else torch.float32
  n, h, w, c = layer["x"]
  kh, kw, _, o = layer["w"]
  x = torch.randn(n, c, h, w).to(memory_format=cl).to(kind)
  kernel = torch.randn(o, c, kh, kw).to(kind).to(memory_format=cl)
  dy = torch.randn(n, o, *layer["y"][1:3]).to(memory_format=cl).to(kind)
  (pt, pb), (pl, pr) = layer["padding"]
  if pt != pb or pl != pr:
    raise ValueError(f"{layer['name']}: torch takes symmetric padding only")
  stride, padding = list(layer["strides"]), [pt, pl]
  mask = [primitive == 1, primitive == 2, False]

  def run():
    best = float("inf")
    for _ in range(CALLS):
      start = time.perf_counter()
      if primitive == 0:
        torch.nn.functional.conv2d(x, kernel, stride=stride, padding=padding)
      else:
        torch.ops.aten.convolution_backward(dy, x, kernel, None, stride, padding, [1, 1],
                                            False, [0, 0], 1, mask)
      best = min(best, time.perf_counter() - start)
    return best
  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="quick", choices=("quick", "tgs", "classic"))
  parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
  args = parser.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  reason = library.unavailable_reason()
  if reason is not None:
    sys.exit(f"conv_kernels_vs_torch: the oneDNN kernels cannot load: {reason}")
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  layers = quick_layers() if args.preset == "quick" else conv_layers.model_layers(args.preset)
  print(f"{args.preset}, {args.dtype}: {'layer x -> w':34s} {'pass':16s} {'project':>8s} "
        f"{'torch':>8s} GFLOP/s  torch speed / project")
  step = {"project": 0.0, "torch": 0.0}
  for layer in layers:
    for name in conv_layers.PASSES:
      primitive = conv_layers.primitive_of(layer, name)
      mine, theirs = (project_pass(layer, primitive, args.dtype),
                      torch_pass(torch, layer, primitive, args.dtype))
      mine_s, theirs_s = [], []
      for _ in range(3):
        mine_s.append(mine())
        theirs_s.append(theirs())
      count = conv_layers_report.step_count(layer, name)
      step["project"] += count * min(mine_s)
      step["torch"] += count * min(theirs_s)
      label = f"{layer['kind']} {'x'.join(map(str, layer['x']))} -> {layer['w'][3]}"
      print(f"{label:46s} {name:16s} {layer['flops'] / min(mine_s) / 1e9:8.0f} "
            f"{layer['flops'] / min(theirs_s) / 1e9:8.0f}          "
            f"{min(mine_s) / min(theirs_s):.2f}  (x{count} a step)", flush=True)
  print(f"convolution seconds per train step: project {step['project']:.3f}, torch "
        f"{step['torch']:.3f} (torch speed / project {step['project'] / step['torch']:.2f})")


if __name__ == "__main__":
  main()
