"""Issue 24, the cheap lever first: Winograd F(2x2,3x3) written in JAX, no native code.

  python benchmarks/kernels/winograd_xla.py [--preset classic] [--rounds 10]

The forward pass and the input gradient run in the Winograd domain (float32 transforms as XLA
elementwise passes, the 16 transformed-domain products as one bf16 batched matmul with float32
accumulation); the weight gradient stays oneDNN's direct kernel (a custom VJP). Timed against
the project's oneDNN direct convolution (forward, and forward + both gradients) on the preset's
3x3 layers with >= 256 output channels, taking turns, best of --rounds; relative errors against
a float32 XLA convolution. Writes benchmarks/results/<device-slug>/winograd_xla_<preset>.{json,md}.
A measurement, not library code: if XLA's transform passes cost more than the matmul saves,
Winograd has to be the fused native kernel the issue describes.
"""

import argparse
import datetime
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from benchmarks import machine
from benchmarks.kernels import winograd_gate
from unet_jax.ops import kernels
# pylint: enable=wrong-import-position

_SAME = ((1, 1), (1, 1))
_DIMS = ("NHWC", "HWIO", "NHWC")
# Index of U[u, v] for the kernel flipped in both spatial axes: G maps a reversed filter to
# rows (3, 1, 2, 0) of the original's transform.
_FLIPPED = np.array([(3 - u if u in (0, 3) else u) * 4 + (3 - v if v in (0, 3) else v)
                     for u in range(4) for v in range(4)])


def _g_rows(r0, r1, r2):
  """G g for G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
  return (r0, (r0 + r1 + r2) * 0.5, (r0 - r1 + r2) * 0.5, r2)


def kernel_transform(w, dtype):
  """HWIO (3, 3, C, O) -> (16, C, O): G g G^T, one elementwise pass."""
  w = w.astype(jnp.float32)
  cols = [_g_rows(w[a, 0], w[a, 1], w[a, 2]) for a in range(3)]  # cols[a][v]
  rows = [_g_rows(cols[0][v], cols[1][v], cols[2][v]) for v in range(4)]  # rows[v][u]
  return jnp.stack([rows[v][u] for u in range(4) for v in range(4)]).astype(dtype)


def _bt(r):
  """B^T d over the leading axis: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
  [0, 1, 0, -1]]."""
  return jnp.stack([r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]])


def _input_transform(x, th, tw, dtype):
  """SAME-padded (N, H, W, C) -> (16, N * th * tw, C): B^T d B of every 4x4 tile (stride 2)."""
  n, h, w, c = x.shape
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
  d = jnp.stack([jnp.stack([xp[:, a:a + 2 * th:2, b:b + 2 * tw:2] for b in range(4)])
                 for a in range(4)])
  v = _bt(jnp.swapaxes(_bt(d), 0, 1))  # (v, u, ...)
  return jnp.swapaxes(v, 0, 1).reshape(16, n * th * tw, c).astype(dtype)


def _output_transform(m, n, h, w, th, tw):
  """(16, T, O) -> (N, H, W, O): A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
  m = m.reshape(4, 4, n, th, tw, -1)
  rows = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])
  y = jnp.stack([jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], -2) for r in rows], 2)
  return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w]


def _winograd(x, u, transposed: bool):
  n, h, w, _ = x.shape
  th, tw = (h + 1) // 2, (w + 1) // 2
  v = _input_transform(x, th, tw, u.dtype)
  m = jnp.einsum("ktc,koc->kto" if transposed else "ktc,kco->kto", v, u,
                 preferred_element_type=jnp.float32)
  return _output_transform(m, n, h, w, th, tw).astype(x.dtype)


@jax.custom_vjp
def winograd_conv(x, w):
  """A stride-1 SAME 3x3 convolution, NHWC x HWIO, computed in x.dtype by Winograd F(2x2,3x3)."""
  return _winograd(x, kernel_transform(w, x.dtype), transposed=False)


def _winograd_fwd(x, w):
  u = kernel_transform(w, x.dtype)
  return _winograd(x, u, transposed=False), (x, w, u)


def _winograd_bwd(residuals, dy):
  x, w, u = residuals
  dy = dy.astype(x.dtype)
  dx = _winograd(dy, u[_FLIPPED], transposed=True)  # The flipped, transposed kernel.
  # pylint: disable-next=protected-access
  dw = kernels._backward_weights_sharded((1, 1), _SAME, w.shape, x, dy)
  return dx, dw.astype(w.dtype)


winograd_conv.defvjp(_winograd_fwd, _winograd_bwd)


def direct_conv(x, w):
  return kernels.conv2d(x, w, (1, 1), _SAME)


def _gradients(conv):
  return jax.jit(jax.grad(lambda x, w, t: jnp.vdot(conv(x, w).astype(jnp.float32), t),
                          argnums=(0, 1)))


def relative_errors(x, w) -> dict:
  """||a - ref|| / ||ref|| of y, dx and dw for both algorithms, ref = float32 XLA."""
  x32 = x.astype(jnp.float32)
  reference = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                        dimension_numbers=_DIMS,
                                                        precision="highest")
  target = reference(x32, w)
  expected = (target, *_gradients(reference)(x32, w, target))
  errors = {}
  for name, conv in (("direct", direct_conv), ("winograd", winograd_conv)):
    got = (jax.jit(conv)(x, w), *_gradients(conv)(x, w, target))
    errors[name] = [float(jnp.linalg.norm(g.astype(jnp.float32) - e) / jnp.linalg.norm(e))
                    for g, e in zip(got, expected)]
  return errors


def _milliseconds(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) * 1e3


def time_layer(layer: dict, rounds: int) -> dict:
  """Forward and forward + gradients of both algorithms, taking turns, best of rounds."""
  x = jax.random.normal(jax.random.key(0), layer["x"], jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), layer["w"], jnp.float32) / np.sqrt(9 * layer["w"][2])
  target = jnp.ones(layer["x"][:3] + layer["w"][3:], jnp.float32)
  fns = {"direct": direct_conv, "winograd": winograd_conv}
  passes = {f"{name}_{kind}": (jax.jit(fn), (x, w)) if kind == "fwd" else
            (_gradients(fn), (x, w, target))
            for name, fn in fns.items() for kind in ("fwd", "train")}
  for fn, args in passes.values():  # Compile and warm up, untimed.
    jax.block_until_ready(fn(*args))
  samples = {key: [] for key in passes}
  for _ in range(rounds):  # The four passes take turns, so drift hits them alike.
    for key, (fn, args) in passes.items():
      samples[key].append(_milliseconds(fn, args))
  best = {key: min(times) for key, times in samples.items()}
  return {"name": layer["name"], "x": list(layer["x"]), "w": list(layer["w"]),
          **{f"{k}_ms": v for k, v in best.items()},
          "speedup_fwd": best["direct_fwd"] / best["winograd_fwd"],
          "speedup_train": best["direct_train"] / best["winograd_train"],
          "rel_err": relative_errors(x, w)}


def markdown(report: dict) -> str:
  lines = [f"# Winograd F(2x2,3x3) in JAX (XLA transforms + one bf16 batched matmul) vs oneDNN "
           f"direct: {report['preset']} preset", "",
           f"- CPU: {report['device']['name']}; {report['date']}; best of {report['rounds']} "
           "rounds, taking turns; train = forward + input and weight gradients (Winograd's "
           "weight gradient is oneDNN's direct kernel).",
           "- rel err: y / dx / dw against a float32 XLA convolution.", "",
           "| layer | x (NHWC) | C->O | fwd direct / Winograd ms | speedup | train direct / "
           "Winograd ms | speedup | rel err direct | rel err Winograd |", "|---" * 9 + "|"]
  for r in report["layers"]:
    errors = {k: " / ".join(f"{e:.1e}" for e in v) for k, v in r["rel_err"].items()}
    lines.append(f"| {r['name']} | {'x'.join(map(str, r['x']))} | {r['w'][2]}->{r['w'][3]} | "
                 f"{r['direct_fwd_ms']:.2f} / {r['winograd_fwd_ms']:.2f} | "
                 f"{r['speedup_fwd']:.2f}x | {r['direct_train_ms']:.2f} / "
                 f"{r['winograd_train_ms']:.2f} | {r['speedup_train']:.2f}x | "
                 f"{errors['direct']} | {errors['winograd']} |")
  return "\n".join(lines + ["", report["verdict"], ""])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="classic", choices=("classic", "tgs"))
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--out_dir", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args(argv)
  rows, layers = [], winograd_gate.gate_layers(args.preset)
  if not layers:
    raise SystemExit(f"the {args.preset} preset has no 3x3 layer with >= "
                     f"{winograd_gate.MIN_CHANNELS} output channels to time")
  for layer in layers:
    rows.append(time_layer(layer, args.rounds))
    print(f"{rows[-1]['name']}: fwd {rows[-1]['speedup_fwd']:.2f}x, train "
          f"{rows[-1]['speedup_train']:.2f}x", flush=True)
  best = max(r["speedup_train"] for r in rows)
  device = machine.detect_device()
  report = {"benchmark": "winograd_xla", "preset": args.preset, "rounds": args.rounds,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "layers": rows, "best_speedup_train": best,
            "verdict": f"Best train-pass speedup {best:.2f}x: "
                       + ("a candidate for the per-layer choice." if best >= 1.3 else
                          "below the 1.3x gate; XLA's transform passes cost more than the "
                          "matmul saves, so Winograd has to be the fused native kernel.")}
  out = pathlib.Path(args.out_dir) / device["slug"]
  out.mkdir(parents=True, exist_ok=True)
  (out / f"winograd_xla_{args.preset}.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / f"winograd_xla_{args.preset}.md").write_text(markdown(report))
  print(report["verdict"])


if __name__ == "__main__":
  main()
