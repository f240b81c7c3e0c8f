"""Renders a time-to-quality report: JSON, markdown and one PNG with both curves."""

import json
import pathlib
import textwrap

COLORS = {"jax": "tab:blue", "torch": "tab:orange"}


def _fmt(value, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def run_line(result) -> str:
  final = result["points"][-1]
  return (f"{final['steps']} steps in {final['seconds']:.1f} s, IoU {final['iou']:.4f}, "
          f"TGS {_fmt(final['tgs_map'], '.4f')}; setup {result['setup_s']:.1f} s, eval "
          f"{sum(p['eval_s'] for p in result['points']):.1f} s")


def table(data) -> str:
  lines = ["| run | steps | train s | steps/s | final IoU | final TGS | setup s | eval s |",
           "|---|---|---|---|---|---|---|---|"]
  for result in data["runs"]:
    if result["status"] != "ok":
      lines.append(f"| {result['label']} | failed: {result['error'][:90]} | | | | | | |")
      continue
    s = data["summary"]["runs"][result["name"]]
    lines.append(f"| {result['label']} | {s['steps']} | {s['train_s']:.1f} | "
                 f"{_fmt(s['steps_per_s'], '.3f')} | {s['final_iou']:.4f} | "
                 f"{_fmt(s['final_tgs_map'], '.4f')} | {s['setup_s']:.1f} | "
                 f"{s['eval_s_total']:.1f} |")
  return "\n".join(lines)


def headline(data) -> str:
  s = data["summary"]
  if "target_iou" not in s:
    return "Speedup: n/a (a run failed)"
  if not s["torch_improved"]:
    return f"Speedup: n/a (PyTorch ended at its initial IoU {s['target_iou']:.4f})"
  if s["speedup"] is None:
    reached = ("reached at 0 s" if s["jax_reached_target"] else "not reached by JAX")
    return f"Speedup: n/a (PyTorch's final IoU {s['target_iou']:.4f} {reached})"
  return (f"**Speedup {s['speedup']:.2f}x**: PyTorch reached its final IoU "
          f"{s['target_iou']:.4f} after {s['torch_s_to_target']:.1f} s of training, JAX after "
          f"{s['jax_s_to_target']:.1f} s ({s['speedup_including_setup']:.2f}x counting setup)"
          f"{_verdict(s)}")


def _verdict(s) -> str:
  """The issue's two per-second targets, met or not."""
  if "meets_speedup_target" not in s:
    return ""
  yes = lambda flag: "yes" if flag else "**no**"
  return (f". Targets: speedup >= 1.2x {yes(s['meets_speedup_target'])}; JAX's final IoU "
          f"({s['jax_final_iou']:.4f}) above PyTorch's {yes(s['jax_final_higher'])}")


def _gap_line(data, key: str) -> str:
  s = data["summary"]
  gap, spread = s[f"per_step_max_diff_{key}"], s[f"torch_seed_spread_{key}"]
  gap_text = (f"max |JAX - PyTorch| at equal steps {gap['max']:.4f} (step {gap['at_step']}, "
              f"{gap['steps_compared']} step counts up to {gap['up_to_step']})" if gap
              else "JAX vs PyTorch: n/a")
  spread_text = (f"PyTorch seed spread {spread['max']:.4f} (step {spread['at_step']})"
                 if spread else "seed spread: n/a (one torch seed)")
  within = s[f"per_step_within_spread_{key}"]
  verdict = "" if within is None else (" - within the spread" if within
                                      else " - **outside the spread**")
  return f"- {key}: {gap_text}; {spread_text}{verdict}."


def markdown(data) -> str:
  protocol, env, config = data["protocol"], data["environment"], data["config"]
  versions = env["versions"]
  return "\n".join([
      f"# Time to quality: {config['dataset']} on {data['device']['name']}",
      "",
      f"U-Net {config['model']['features']} channels, depth {config['model']['depth']}, "
      f"{config['image_size']} images, batch {config['batch_size']}, {config['loss']}, "
      f"{config['optimizer']} lr {config['learning_rate']} ({config['schedule']}, "
      f"{config['num_train_steps']} steps of schedule); {protocol['budget_s']:.0f} s of "
      f"training per run on {protocol['threads']} threads.",
      "",
      table(data),
      "",
      headline(data),
      "",
      "Per step (validation at equal step counts, linear between evaluations):",
      _gap_line(data, "iou"),
      _gap_line(data, "tgs_map"),
      "",
      *([f"Note: {data['note']}", ""] if data.get("note") else []),
      f"- Clock: {protocol['clock']}; {len(protocol['eval_points_s'])} evaluations at "
      f"evenly spaced training times, plus one before step 1; scored on "
      f"{protocol['scored_on']}.",
      f"- PyTorch options: {json.dumps(protocol['torch_options'])}; JAX: the config "
      f"(host_malloc={config['host_malloc']}, model dtype {config['model'].get('dtype')}).",
      f"- Device: {data['device']['name']} (`{data['device']['slug']}`); started "
      f"{env['started_utc']}, load average {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}"
      f" at start, {', '.join(f'{x:.2f}' for x in env['loadavg_end'])} at the end.",
      f"- Versions: jax {versions.get('jax')}, jaxlib {versions.get('jaxlib')}, flax "
      f"{versions.get('flax')}, optax {versions.get('optax')}, torch {versions.get('torch')}.",
      "",
  ])


def plot(data, path: pathlib.Path) -> None:
  """IoU (solid) and TGS metric (dotted) against training seconds and against steps."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for index, result in enumerate(r for r in data["runs"] if r["status"] == "ok"):
    color = COLORS[result["framework"]]
    style = "-" if index < 2 else "--"  # Further torch seeds dashed.
    for axis, x_key in zip(axes, ("seconds", "steps")):
      x = [p[x_key] for p in result["points"]]
      axis.plot(x, [p["iou"] for p in result["points"]], marker="o", markersize=3,
                color=color, linestyle=style, label=f"{result['label']}: IoU")
      if result["points"][0]["tgs_map"] is not None:
        axis.plot(x, [p["tgs_map"] for p in result["points"]], linestyle=":", color=color,
                  alpha=0.7, label=f"{result['label']}: TGS metric")
  axes[0].set_xlabel("training seconds (evaluation excluded)")
  axes[1].set_xlabel("steps")
  for axis in axes:
    axis.set_ylabel("validation score")
    axis.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc="lower right")
  title = f"Time to quality on {data['device']['name']}: {headline(data).replace('**', '')}"
  figure.suptitle(textwrap.fill(title, 170), fontsize=9)  # The headline runs past the figure.
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def write(data, directory: pathlib.Path, stem: str) -> list[pathlib.Path]:
  """<directory>/<stem>.json, .md and .png."""
  directory.mkdir(parents=True, exist_ok=True)
  paths = [directory / f"{stem}.{suffix}" for suffix in ("json", "md", "png")]
  paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
  paths[1].write_text(markdown(data))
  plot(data, paths[2])
  return paths
