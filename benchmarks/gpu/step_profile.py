"""Where the JAX train step's device time goes: a few steps traced by jax.profiler, their
kernels ranked by total time per step, from the Perfetto trace (no TensorBoard needed).

gpu_check.py runs it on the classic preset when JAX misses its goal there (issue 22: "where
JAX is behind, profile and name the kernel that costs it"), so the one GPU run that a session
gets already holds the answer. Device timelines (processes named /device:...) are summed per
timeline (e.g. a CUDA stream) and per kernel name; on a CPU, which has no device timeline,
the host's threads stand in (the dry run). The compiled step's optimized HLO is kept beside
the trace, and its layout changes (transposes, and copies into another layout, fused ones
included) are counted with their shapes: the first H200 trace spent 7.8% of the step in 59
transpose kernels that the trace alone cannot attribute.
"""

import collections
import gzip
import json
import math
import pathlib
import re
import tempfile

TOP_KERNELS = 12  # Kernel names listed per timeline.
TOP_LINES = 4  # Busiest timelines listed.
TOP_TRANSPOSES = 10  # Largest layout changes listed.
# `[ROOT ]%name = bf16[32,64,8,8]{3,2,1,0} opcode(operands), attributes`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (\w+)\[([\d,]*)\](?:\{([\d,]*)[^}]*\})? "
                          r"([\w-]+)\((.*)$")
_OPERAND = re.compile(r"^(?:\w+\[[\d,]*\]\{([\d,]*)[^}]*\} )?%([\w.-]+)")


def hlo_layout_changes(hlo_text: str) -> dict:
  """Transposes and layout-changing copies in an optimized HLO module (fused ones included):
  how many, how many elements they move in all, and the largest, with the op that made them."""
  layouts, found = {}, []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, dtype, shape, layout, opcode, rest = match.groups()
    layouts[name] = layout
    if opcode == "transpose":
      dimensions = re.search(r"dimensions=\{([\d,]*)\}", rest)
      change = dimensions and dimensions.group(1)
    elif opcode == "copy":
      operand = _OPERAND.match(rest)
      source = operand and (operand.group(1) or layouts.get(operand.group(2)))
      change = source is not None and source != layout and f"layout {{{source}}} -> {{{layout}}}"
    else:
      continue
    if change:
      op_name = re.search(r'op_name="([^"]*)"', rest)
      shape = [int(d) for d in shape.split(",") if d]
      found.append({"op": opcode, "dtype": dtype, "shape": shape, "dimensions": change,
                    "elements": math.prod(shape), "op_name": op_name and op_name.group(1)})
  found.sort(key=lambda change: -change["elements"])
  return {"count": len(found), "elements": sum(c["elements"] for c in found),
          "largest": found[:TOP_TRANSPOSES]}


def _names(events, kind: str) -> dict:
  """pid -> process name ('process_name') or (pid, tid) -> thread name ('thread_name')."""
  found = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == kind:
      key = e["pid"] if kind == "process_name" else (e["pid"], e.get("tid"))
      found[key] = e.get("args", {}).get("name", "")
  return found


def _hlo_op(event) -> str | None:
  args = event.get("args") or {}
  return args.get("hlo_op") or args.get("long_name") or None


def summarize_trace(events: list, steps: int) -> dict:
  """Busy time per timeline and its top kernels, in ms per traced step, from Chrome-trace
  events (complete events 'X', durations in microseconds)."""
  processes, threads = _names(events, "process_name"), _names(events, "thread_name")
  device = {pid for pid, name in processes.items() if name.startswith("/device:")}
  by_line = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e and (not device or e["pid"] in device):
      thread = threads.get((e["pid"], e.get("tid")), e.get("tid"))
      line = f"{processes.get(e['pid'], e['pid'])} / {thread}"
      by_line[line].append(e)
  lines = []
  for line, line_events in by_line.items():
    totals = collections.defaultdict(float)
    counts = collections.Counter()
    ops = collections.defaultdict(collections.Counter)
    for e in line_events:
      totals[e["name"]] += e["dur"] / 1e3
      counts[e["name"]] += 1
      if op := _hlo_op(e):
        ops[e["name"]][op] += 1
    busy = sum(totals.values())
    top = sorted(totals, key=totals.get, reverse=True)[:TOP_KERNELS]
    lines.append({"line": line, "busy_ms_per_step": busy / steps, "events": len(line_events),
                  "kernels": [{"name": name, "ms_per_step": totals[name] / steps,
                               "share": totals[name] / busy if busy else 0.0,
                               "calls_per_step": counts[name] / steps,
                               "hlo_op": ops[name].most_common(1)[0][0] if ops[name] else None}
                              for name in top]})
  lines.sort(key=lambda entry: entry["busy_ms_per_step"], reverse=True)
  return {"device_timelines": bool(device), "lines": lines[:TOP_LINES]}


def _trace_path(log_dir: pathlib.Path) -> pathlib.Path:
  traces = sorted(log_dir.rglob("perfetto_trace.json.gz"))
  if not traces:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {log_dir}")
  return traces[-1]


def _events(trace: bytes) -> list:
  data = json.loads(gzip.decompress(trace))
  return data["traceEvents"] if isinstance(data, dict) else data


def markdown(result: dict) -> str:
  head = (f"# Where the JAX step's time goes: {result['preset']}, {result['dtype']}, "
          + ("train state in XLA's layouts, " if result.get("auto_layouts") else "")
          + f"{result['steps']} traced steps")
  lines = [head, "", f"Device: {result['device']}. Wall time of the traced steps "
           f"{result['wall_ms_per_step']:.2f} ms a step. "
           + ("Device timelines (ms per step; a kernel's share of its timeline's busy time):"
              if result["device_timelines"] else
              "No device timeline in the trace (a CPU, or a GPU without CUPTI): host threads.")]
  for line in result["lines"]:
    lines += ["", f"## {line['line']}: busy {line['busy_ms_per_step']:.2f} ms a step", "",
              "| kernel | ms / step | share | calls / step | HLO op |", "|---|---:|---:|---:|---|"]
    lines += [f"| `{k['name'][:110]}` | {k['ms_per_step']:.3f} | {k['share']:.1%} | "
              f"{k['calls_per_step']:.1f} | {k['hlo_op'] or '-'} |" for k in line["kernels"]]
  changes = result.get("hlo_layout_changes")
  if changes:
    lines += ["", f"## Layout changes in the optimized HLO: {changes['count']}, "
              f"{changes['elements'] / 1e6:.1f} M elements in all", "",
              "| op | dtype | shape | dimensions | M elements | from |",
              "|---|---|---|---|---:|---|"]
    lines += [f"| {c['op']} | {c['dtype']} | {c['shape']} | {c['dimensions']} | "
              f"{c['elements'] / 1e6:.2f} | `{(c['op_name'] or '-')[-90:]}` |"
              for c in changes["largest"]]
  return "\n".join(lines) + "\n"


def run(preset: str = "classic", bf16: bool = True, steps: int = 5, tiny: bool = False,
        out_dir: str | None = None, trace_dir: str | None = None,
        auto_layouts: bool = False) -> dict:
  """Builds the preset's JAX train step (benchmarks/step/variants.build_jax; auto_layouts: the
  state in XLA's layouts), warms it up, traces `steps` steps; writes profile_<preset>.{json,md}
  to out_dir and the trace's perfetto_trace.json.gz to trace_dir when given."""
  import time  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks.step import throughput, variants  # pylint: disable=import-outside-toplevel
  platform = jax.devices()[0].platform
  spec = throughput.preset_spec("tiny" if tiny else preset, "gpu" if platform == "gpu" else "cpu")
  step, _, info = variants.build_jax(spec, bf16=bf16, keep_hlo=True, auto_layouts=auto_layouts)
  hlo = info.pop("optimized_hlo")
  step(2)
  with tempfile.TemporaryDirectory() as log_dir:
    start = time.perf_counter()
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      step(steps)
    wall = time.perf_counter() - start
    trace = _trace_path(pathlib.Path(log_dir)).read_bytes()
  if trace_dir:
    pathlib.Path(trace_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(trace_dir) / f"profile_{preset}.perfetto_trace.json.gz").write_bytes(trace)
    (pathlib.Path(trace_dir) / f"profile_{preset}.hlo.txt.gz").write_bytes(
        gzip.compress(hlo.encode()))
  result = {"preset": preset, "dtype": "bfloat16" if bf16 else "float32", "steps": steps,
            "auto_layouts": info.get("auto_layouts"),
            "device": info["device_name"], "wall_ms_per_step": wall * 1e3 / steps,
            **summarize_trace(_events(trace), steps), "hlo_layout_changes": hlo_layout_changes(hlo)}
  if out_dir:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"profile_{preset}.md").write_text(markdown(result))
  return result
