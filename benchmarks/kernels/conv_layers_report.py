"""Renders a conv_layers report (benchmarks/kernels/conv_layers.py): JSON, markdown and a bar chart."""

import json
import pathlib

IMPLS = ("xla", "onednn_jax", "onednn_direct", "winograd_jax")
LABELS = {"xla": "XLA", "onednn_jax": "oneDNN via JAX", "onednn_direct": "oneDNN direct",
          "winograd_jax": "Winograd via JAX"}
PASSES = ("forward", "input_grad", "weight_grad")


def step_count(layer, pass_name: str) -> int:
  """How many times one train step runs this pass of this layer."""
  return layer["input_grad_count" if pass_name == "input_grad" else "count"]


def _shape(layer) -> str:
  n, h, w, c = layer["x"]
  o = layer["w"][3]
  if layer["transposed"]:
    _, oh, ow, _ = layer["y"]
    return f"{layer['kind']} {n}x{oh}x{ow}x{o} -> {h}x{w}x{c}"
  return f"{layer['kind']} {n}x{h}x{w}x{c} -> {o}"


def layer_table(data, dtype: str) -> str:
  """One row per layer and pass: GFLOP/s of each implementation and three ratios."""
  impls = [i for i in IMPLS if i in data["implementations"]]
  winograd = "winograd_jax" in impls
  lines = ["| layer | count | pass | " + " | ".join(LABELS[i] for i in impls) +
           " | JAX / direct | JAX / XLA |" + (" Winograd / JAX |" if winograd else ""),
           "|---|---|---|" + "---|" * (len(impls) + 2 + winograd)]
  for layer in data["layers"]:
    for p in PASSES:
      t = layer["timings"][dtype][p]
      g = [t[i]["gflops"] for i in impls]
      count = step_count(layer, p)
      lines.append(f"| {_shape(layer)} | {count} | {p} | " + " | ".join(f"{v:.1f}" for v in g)
                   + f" | {g[1] / g[2]:.2f} | {g[1] / g[0]:.2f} |"
                   + (f" {g[3] / g[1]:.2f} |" if winograd else ""))
  return "\n".join(lines)


def totals_table(data, dtype: str) -> str:
  total = data["totals"][dtype]
  impls = [i for i in IMPLS if i in data["implementations"]]
  lines = ["| pass | " + " | ".join(LABELS[i] for i in impls) + " |",
           "|---|" + "---|" * len(impls)]
  for p in PASSES:
    lines.append(f"| {p} | " + " | ".join(f"{total['by_pass'][p][i]:.1f}" for i in impls) + " |")
  lines.append("| **all (FLOP-weighted)** | " +
               " | ".join(f"**{total['gflops'][i]:.1f}**" for i in impls) + " |")
  lines.append("| conv seconds per train step | " +
               " | ".join(f"{total['seconds'][i]:.3f}" for i in impls) + " |")
  return "\n".join(lines)


def headline(data, dtype: str) -> str:
  total = data["totals"][dtype]
  verdict = "meets" if total["meets_80pct_of_direct"] else "**misses**"
  line = (f"**{dtype}: oneDNN via JAX / direct = {total['ratio_onednn_jax_to_direct']:.2f}** "
          f"({verdict} the 0.80 bar); oneDNN via JAX / XLA = "
          f"{total['ratio_onednn_jax_to_xla']:.2f}x")
  if "winograd_jax" in total["gflops"]:
    line += (f"; Winograd (where it applies) / oneDNN via JAX = "
             f"{total['gflops']['winograd_jax'] / total['gflops']['onednn_jax']:.2f}x")
  return line


def markdown(data) -> str:
  env, model, protocol = data["environment"], data["model"], data["protocol"]
  versions = env["versions"]
  sections = []
  for dtype in protocol["dtypes"]:
    sections += [f"## {dtype}", "", headline(data, dtype), "", "GFLOP/s:", "",
                 totals_table(data, dtype), "", layer_table(data, dtype), ""]
  for dtype, reason in protocol.get("left_out", {}).items():
    sections += [f"## {dtype}", "", f"Left out: {reason}.", ""]
  return "\n".join([
      f"# Convolution layers: {data['preset']} on {data['device']['name']}", "",
      f"`{data['preset']}` U-Net: {model['features']} features, depth {model['depth']}, "
      f"{model['height']}x{model['width']}x{model['in_channels']}, batch {model['batch']}, "
      f"{model['padding']}; its {len(data['layers'])} distinct convolutions (traced from "
      "unet_jax.models.unet.UNet), each pass timed apart. GFLOP/s = 2*N*OH*OW*KH*KW*C*O per "
      "pass / best time; totals weight every layer by its count in one train step (the first "
      "conv's input gradient left out).", "",
      *sections,
      "- Implementations: " + "; ".join(f"{LABELS[i]}: {d}"
                                        for i, d in data["implementations"].items()) + ".",
      f"- Protocol: {protocol['warmup_calls']} warm-up call(s), then best of "
      f"{protocol['repeats']} calls per pass, the implementations taking turns.",
      f"- Host malloc: `{env['host_malloc']}` (unet_jax.host_memory, applied before the first "
      "JAX computation, as the step benchmark's *_reuse_malloc variants).",
      f"- Device: {data['device']['name']} (`{data['device']['slug']}`, "
      f"{data['device']['cores']} usable cores); started {env['started_utc']}, load average "
      f"{', '.join(f'{x:.2f}' for x in env['loadavg_start'])} at start, "
      f"{', '.join(f'{x:.2f}' for x in env['loadavg_end'])} at the end; {env['wall_s']:.0f} s.",
      f"- Versions: jax {versions.get('jax')}, jaxlib {versions.get('jaxlib')}, flax "
      f"{versions.get('flax')}, numpy {versions.get('numpy')}, python "
      f"{versions.get('python')}; XLA_FLAGS={env['env'].get('XLA_FLAGS')!r}, "
      f"OMP_NUM_THREADS={env['env'].get('OMP_NUM_THREADS')!r}.", ""])


def bar_chart(data, path: pathlib.Path) -> None:
  """Per layer (all passes) and in total: GFLOP/s of each implementation, one panel a dtype."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  dtypes, layers = data["protocol"]["dtypes"], data["layers"]
  labels = [_shape(layer) for layer in layers] + ["all (FLOP-weighted)"]
  figure, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 0.45 * len(labels) + 1.8),
                              squeeze=False)
  for axis, dtype in zip(axes[0], dtypes):
    impls = [i for i in IMPLS if i in data["implementations"]]
    for k, impl in enumerate(impls):
      values = [3 * layer["flops"] / sum(layer["timings"][dtype][p][impl]["seconds"]
                                         for p in PASSES) / 1e9 for layer in layers]
      values.append(data["totals"][dtype]["gflops"][impl])
      height = 0.8 / len(impls)
      axis.barh([i + (k - (len(impls) - 1) / 2) * height for i in range(len(labels))], values,
                height=height, label=LABELS[impl])
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("GFLOP/s (forward + input grad + weight grad)")
    ratio = data["totals"][dtype]["ratio_onednn_jax_to_direct"]
    axis.set_title(f"{data['preset']} {dtype}: JAX / direct oneDNN = {ratio:.2f}", fontsize=10)
    axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def write(data, directory: pathlib.Path) -> list[pathlib.Path]:
  """<directory>/conv_layers_<preset>.json, .md and .png."""
  directory.mkdir(parents=True, exist_ok=True)
  stem = directory / f"conv_layers_{data['preset']}"
  paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
  paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
  paths[1].write_text(markdown(data))
  bar_chart(data, paths[2])
  return paths
