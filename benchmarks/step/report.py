"""Renders a throughput report: JSON, a markdown table and a bar chart; README tables.

  python benchmarks/step/report.py          # prints the README block for every committed report
"""

import json
import pathlib
import sys

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


def _fmt(value, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def _preset_line(data) -> str:
  config = data["config"]
  return (f"`{data['preset']}`: U-Net {config['features']}->"
          f"{config['features'] * 2**config['depth']} channels, depth {config['depth']}, "
          f"{config['height']}x{config['width']}x{config['in_channels']}, "
          f"batch {config['batch']}, {config['padding']}, {config['upsample']}")


def table(data) -> str:
  """The per-variant markdown table with the JAX / best PyTorch ratio in bold."""
  best_torch = data["summary"]["best_torch"]
  best_median = next((r["img_per_s"]["median"] for r in data["results"]
                      if r["variant"] == best_torch), None)
  lines = ["| variant | img/s median (min-max) | step ms | first step s | peak mem MiB | "
           "MFU | vs best PyTorch |", "|---|---|---|---|---|---|---|"]
  for result in data["results"]:
    if result["status"] != "ok":
      lines.append(f"| {result['label']} | failed: {result['error'][:90]} | | | | | |")
      continue
    rate = result["img_per_s"]
    ratio = rate["median"] / best_median if best_median else None
    ratio_text = _fmt(ratio, ".2f") + "x"
    if result["framework"] == "jax":
      ratio_text = f"**{ratio_text}**"
    lines.append(
        f"| {result['label']} | {rate['median']:.2f} ({rate['min']:.2f}-{rate['max']:.2f}) | "
        f"{result['step_ms_median']:.0f} | {result['first_step_s']:.1f} | "
        f"{_fmt(result['peak_memory_mib'], '.0f')} | {_fmt(result['mfu'], '.1%')} | "
        f"{ratio_text} |")
  return "\n".join(lines)


def headline(data) -> str:
  summary = data["summary"]
  ratio = summary["ratio_jax_to_best_torch"]
  if ratio is None:
    return "JAX / best PyTorch: n/a"
  return (f"**JAX / best PyTorch = {ratio:.2f}x** (best JAX: `{summary['best_jax']}`, "
          f"best PyTorch: `{summary['best_torch']}`)")


def markdown(data) -> str:
  """The full per-preset report."""
  env, flops, peak = data["environment"], data["flops"], data["peak"]
  versions = env["versions"]
  protocol = data["protocol"]
  xla = flops["xla_cost_analysis_per_image"]
  peak_text = ", ".join(f"{k} {_fmt(v, '.0f')} GFLOP/s" for k, v in peak["peak_gflops"].items())
  return "\n".join([
      f"# Train-step throughput: {data['preset']} on {data['device']['name']}",
      "",
      _preset_line(data) + f"; {data['config']['loss']}; {data['config']['optimizer']}.",
      "",
      table(data),
      "",
      headline(data),
      "",
      *([f"Note: {data['note']}", ""] if data.get("note") else []),
      f"- Device: {data['device']['name']} (`{data['device']['slug']}`, "
      f"{data['device']['cores']} usable cores); started {env['started_utc']}, "
      f"load average at start {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}.",
      f"- Protocol: one process per variant; first step (incl. compile) reported apart; "
      f"{protocol['warmup_steps']} warm-up steps, then {protocol['repeats']} rounds of "
      f"{protocol['timed_steps']} timed steps, variants interleaved (rotated each round)" +
      ("." if protocol.get("meets_issue_minimum", True) else
       " - **fewer timed steps than the standard protocol (20 x 3 on CPU, 100 x 3 on GPU)**, "
       "see the JSON's `protocol`."),
      f"- Model FLOPs per image (train step): {flops['train_per_image'] / 1e9:.2f} GFLOP "
      f"({flops['formula']}); XLA cost analysis of the JAX fp32 step: "
      f"{_fmt(xla and xla / 1e9, '.2f')} GFLOP ({_fmt(flops['xla_to_formula'], '.3f')}x).",
      f"- MFU peak: {peak_text} ({peak['method']}; measured "
      f"{json.dumps({k: {d: round(g) for d, g in v.items()} for k, v in peak['measured_gflops'].items()})}"
      + (f"; data sheet {json.dumps(peak['datasheet_gflops'])}" if "datasheet_gflops" in peak
         else "") + ").",
      f"- Versions: jax {versions.get('jax')}, jaxlib {versions.get('jaxlib')}, flax "
      f"{versions.get('flax')}, optax {versions.get('optax')}, torch {versions.get('torch')}, "
      f"python {versions.get('python')}; XLA_FLAGS={env['env'].get('XLA_FLAGS')!r}; threads "
      f"{json.dumps(env['threads'])}.",
      f"- Peak memory: {next((r['peak_memory_method'] for r in data['results'] if r['status'] == 'ok'), '-')}.",
      *_layout_lines(data),
      "",
  ])


def _layout_lines(data) -> list[str]:
  """What XLA chose for the state of each variant that left its layouts to XLA."""
  lines = []
  for result in data["results"]:
    chosen = (result.get("worker_info") or {}).get("auto_layouts")
    if chosen:
      lines.append(
          f"- {result['label']}: XLA kept {chosen['non_default_layout']} of "
          f"{chosen['state_arrays']} state arrays ({chosen['non_default_elements'] / 1e6:.1f}M "
          "elements) in other than the default row-major layout" +
          ("; recompiled so the new state's layouts equal the old's."
           if chosen["recompiled_for_output"] else "."))
  return lines


def bar_chart(data, path: pathlib.Path) -> None:
  """Median img/s per variant with min/max whiskers, the JAX / best PyTorch ratio annotated."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  done = [r for r in data["results"] if r["status"] == "ok"]
  labels = [r["label"] for r in done]
  medians = [r["img_per_s"]["median"] for r in done]
  errors = [[m - r["img_per_s"]["min"] for m, r in zip(medians, done)],
            [r["img_per_s"]["max"] - m for m, r in zip(medians, done)]]
  colors = ["tab:blue" if r["framework"] == "jax" else "tab:orange" for r in done]
  figure, axis = plt.subplots(figsize=(8, 0.5 * len(done) + 1.6))
  axis.barh(range(len(done)), medians, xerr=errors, color=colors, capsize=4)
  axis.set_yticks(range(len(done)), labels)
  axis.invert_yaxis()
  axis.set_xlabel("images / s (median of rounds; whiskers min-max)")
  ratio = data["summary"]["ratio_jax_to_best_torch"]
  axis.set_title(f"{data['preset']} train step on {data['device']['name']}\n"
                 f"JAX / best PyTorch = {_fmt(ratio, '.2f')}x", fontsize=10)
  for index, (median, result) in enumerate(zip(medians, done)):
    label = f"  {median:.0f}" if median >= 100 else f"  {median:.3g}"  # 1439, not 1.44e+03.
    axis.text(result["img_per_s"]["max"], index, label, va="center", ha="left", fontsize=8)
  # No bars when nothing was timed (every variant failed or was not built).
  axis.set_xlim(0, 1.15 * max((r["img_per_s"]["max"] for r in done), default=1.0))
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def write(data, directory: pathlib.Path) -> list[pathlib.Path]:
  """<directory>/<preset>.json, .md and .png."""
  directory.mkdir(parents=True, exist_ok=True)
  stem = directory / data["preset"]
  paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
  paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
  paths[1].write_text(markdown(data))
  bar_chart(data, paths[2])
  return paths


def readme_block(results: pathlib.Path = RESULTS) -> str:
  """The README benchmark section: the latest table of every preset on every device."""
  blocks = []
  for path in sorted(results.glob("*/*.json")):
    data = json.loads(path.read_text())
    if not {"config", "results", "summary"} <= data.keys():  # Another benchmark's report.
      continue
    blocks += [f"#### {data['device']['name']} (`{data['device']['slug']}`) - "
               f"{_preset_line(data)}", "", table(data), "", headline(data) +
               f"; {data['flops']['train_per_image'] / 1e9:.2f} GFLOP/image; "
               f"[full report]({path.relative_to(results.parent.parent).with_suffix('.md')})", ""]
  return "\n".join(blocks)


if __name__ == "__main__":
  sys.stdout.write(readme_block())
