"""Issue 24's gate: a Winograd F(2x2,3x3) forward prototype vs oneDNN direct bf16 convolution.

  python benchmarks/kernels/winograd_gate.py                    # classic preset, 2 threads
  python benchmarks/kernels/winograd_gate.py --threads 1 2 --rounds 40

Compiles benchmarks/kernels/winograd_gate.cc against the pip oneDNN wheels (found as setup.py
finds them) into build/, runs it on every 3x3 layer of the preset's U-Net with >= 256 output
channels (one process per layer and thread count; inside it the direct convolution and each
Winograd variant take turns, best of --rounds), and writes
benchmarks/results/<device-slug>/winograd_gate.{json,md}. A measurement, not library code.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python benchmarks/kernels/winograd_gate.py` from anywhere.
  sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from benchmarks import machine
from benchmarks.kernels import conv_layers
# pylint: enable=wrong-import-position

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
BINARY = ROOT / "build" / "winograd_gate"
GATE_SPEEDUP = 1.3
MIN_CHANNELS = 256
L2_BUDGET = 1 << 20  # Bytes of one block's transformed input + output (L2 is 2 MiB a core).


def _dist_file(distribution: str, name: str) -> pathlib.Path:
  """The file `name` installed by `distribution` (as setup.py looks it up)."""
  for file in metadata.files(distribution) or ():
    if str(file).replace("\\", "/").endswith(name):
      return pathlib.Path(os.path.normpath(str(file.locate())))
  raise FileNotFoundError(f"{distribution} has no {name}; "
                          f"fix: pip install {distribution}==2023.2.0")


def compile_binary() -> pathlib.Path:
  """g++ -O3 -march=native -fopenmp against onednn-devel-cpu-gomp / onednn-cpu-gomp."""
  header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  library = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
  BINARY.parent.mkdir(exist_ok=True)
  command = ["g++", "-std=c++17", "-O3", "-march=native", "-fopenmp", "-Wall",
             f"-I{header.parents[2]}", str(SOURCE), "-o", str(BINARY),
             f"-L{library.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{library.parent}"]
  subprocess.run(command, check=True)
  return BINARY


def gate_layers(preset: str) -> list[dict]:
  """The preset's stride-1 3x3 convolutions with >= MIN_CHANNELS output channels."""
  return [layer for layer in conv_layers.model_layers(preset)
          if layer["kind"] == "3x3" and layer["strides"] == (1, 1)
          and layer["padding"] == ((1, 1), (1, 1)) and layer["w"][3] >= MIN_CHANNELS]


def block_sizes(layer: dict, threads: int) -> list[int]:
  """Tiles per block to try: L2-sized, 4x and 8x that, one block per thread, 0 (3-pass)."""
  n, h, w, c = layer["x"]
  tiles = n * ((h + 1) // 2) * ((w + 1) // 2)
  per_tile = 16 * (2 * c + 4 * layer["w"][3])
  l2 = max(16, L2_BUDGET // per_tile // 16 * 16)
  per_thread = -(-tiles // threads)
  return sorted(({min(k * l2, tiles) for k in (1, 4, 8)} | {per_thread}) - {tiles}) + [0]


def run_layer(layer: dict, threads: int, rounds: int) -> dict:
  n, h, w, c = layer["x"]
  args = [str(BINARY), *map(str, (n, h, w, c, layer["w"][3], rounds)),
          *map(str, block_sizes(layer, threads))]
  env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
  out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
  result = json.loads(out)
  best = min(result["winograd"], key=lambda v: v["ms"])
  # Robustness check on a loaded machine: the median over rounds of direct / Winograd in the
  # same round (the calls alternate, so both saw the same background load).
  paired = sorted(d / w for d, w in zip(result["direct_rounds_ms"], best["rounds_ms"]))
  return {"name": layer["name"], "modules": layer["modules"], "count": layer["count"],
          **result, "best": best, "speedup": result["direct_ms"] / best["ms"],
          "speedup_paired_median": paired[len(paired) // 2],
          "speedup_vs_im2col": result["im2col"]["ms"] / best["ms"]}


def _top_processes(count: int = 4) -> list[str]:
  """The busiest other processes (what shared the cores during the run)."""
  out = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
                       capture_output=True, text=True, check=False).stdout
  return [" ".join(line.split()) for line in out.splitlines()[:count]]


def _lscpu() -> dict:
  """lscpu's model name, family/model number and cache sizes."""
  out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
  fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  keys = ("Model name", "CPU family", "Model", "L2 cache", "L3 cache")
  return {k: fields[k].strip() for k in keys if k in fields}


def _cpu_flags() -> list[str]:
  with open("/proc/cpuinfo") as cpuinfo:
    for line in cpuinfo:
      if line.startswith("flags"):
        flags = line.split(":", 1)[1].split()
        return [f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f"))]
  return []


def markdown(report: dict) -> str:
  lines = [f"# Winograd F(2x2,3x3) gate (issue 24): {report['preset']} preset, forward, bf16",
           "", f"- CPU: {report['device']['name']} ({report['device']['cores']} cores; "
           f"{', '.join(report['cpu_flags'])}); lscpu: {report['lscpu']}",
           f"- oneDNN {report['onednn']}; direct: `{report['direct_impls']}`, "
           f"Winograd GEMMs: matmul `{report['matmul_impls']}`",
           f"- Load average (1, 5, 15 min) before {report['load_before']}, after "
           f"{report['load_after']}; busiest processes before: {report['busy_before']}, "
           f"after: {report['busy_after']}",
           f"- Best of {report['rounds']} rounds, direct and Winograd variants taking turns in "
           "one process; weight reorder / kernel transform untimed on both sides; "
           "Winograd = best block size (0 = 3-pass).",
           "- rel err: ||y - y_f32|| / ||y_f32|| against oneDNN f32 direct on the same "
           "bf16-rounded operands.",
           "- im2col: a control, im2col + one bf16 oneDNN matmul (all multiplications of the "
           "direct convolution, as one GEMM).",
           "- speedup: direct / Winograd, best of rounds each; paired: median over rounds of "
           "the same round's ratio.", ""]
  for threads, rows in report["results"].items():
    lines += [f"## {threads} thread(s)", "",
              "| layer | x (NHWC) | C->O | direct ms | im2col ms | Winograd ms | block/tiles | "
              "input / GEMM / output ms | direct / im2col / Winograd-GEMM TFLOP/s | speedup "
              "(paired) | rel err direct / Winograd |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      b = r["best"]
      lines.append(
          f"| {r['name']} (x{r['count']}) | {r['n']}x{r['h']}x{r['w']}x{r['c']} | "
          f"{r['c']}->{r['o']} | {r['direct_ms']:.2f} | {r['im2col']['ms']:.2f} | "
          f"{b['ms']:.2f} | "
          f"{b['block'] if b['block'] < b['tiles'] else '3-pass'}/{b['tiles']} | "
          f"{b['input_ms']:.2f} / {b['gemm_ms']:.2f} / {b['output_ms']:.2f} | "
          f"{r['direct_flops'] / r['direct_ms'] / 1e9:.2f} / "
          f"{r['direct_flops'] / r['im2col']['gemm_ms'] / 1e9:.2f} / "
          f"{b['gemm_flops'] / b['gemm_ms'] / 1e9:.2f} | "
          f"{r['speedup']:.2f}x ({r['speedup_paired_median']:.2f}x) | "
          f"{r['direct_rel_err']:.2e} / {b['rel_err']:.2e} |")
    lines.append("")
  lines += [f"**Gate (any layer >= {GATE_SPEEDUP}x, best-of-rounds and paired median): "
            f"{report['verdict']}**", ""]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="classic", choices=("classic", "tgs"))
  parser.add_argument("--threads", type=int, nargs="+", default=[2])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--out_dir", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args(argv)
  compile_binary()
  layers = gate_layers(args.preset)
  load_before, busy_before = os.getloadavg(), _top_processes()
  results = {}
  for threads in args.threads:
    results[str(threads)] = []
    for layer in layers:
      row = run_layer(layer, threads, args.rounds)
      print(f"{threads}t {row['name']}: direct {row['direct_ms']:.2f} ms, im2col "
            f"{row['im2col']['ms']:.2f} ms, Winograd {row['best']['ms']:.2f} ms (block "
            f"{row['best']['block']}), {row['speedup']:.2f}x (paired "
            f"{row['speedup_paired_median']:.2f}x)", flush=True)
      results[str(threads)].append(row)
  # A layer passes when both its best-of-rounds and its paired-median speedup reach the gate.
  best = max(min(r["speedup"], r["speedup_paired_median"]) for rows in results.values()
             for r in rows)
  passing = sorted({f"{r['c']}->{r['o']}" for rows in results.values() for r in rows
                    if min(r["speedup"], r["speedup_paired_median"]) >= GATE_SPEEDUP})
  device = machine.detect_device()
  report = {
      "benchmark": "winograd_gate", "preset": args.preset, "rounds": args.rounds,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": device, "cpu_flags": _cpu_flags(), "lscpu": _lscpu(),
      "onednn": metadata.version("onednn-cpu-gomp"),
      "direct_impls": sorted({r["direct_impl"] for rows in results.values() for r in rows}),
      "matmul_impls": sorted({v["matmul_impl"] for rows in results.values() for r in rows
                              for v in r["winograd"] + [r["im2col"]]}),
      "load_before": [round(x, 2) for x in load_before],
      "load_after": [round(x, 2) for x in os.getloadavg()], "busy_before": busy_before,
      "busy_after": _top_processes(),
      "best_speedup": best,
      "passing_layers": passing,
      "verdict": (f"pass on {', '.join(passing)}" if passing else "blocked")
                 + f" (best {best:.2f}x)",
      "results": results}
  out = pathlib.Path(args.out_dir) / device["slug"]
  out.mkdir(parents=True, exist_ok=True)
  (out / "winograd_gate.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "winograd_gate.md").write_text(markdown(report))
  print(f"gate: {report['verdict']}; wrote {out}/winograd_gate.{{json,md}}")


if __name__ == "__main__":
  main()
