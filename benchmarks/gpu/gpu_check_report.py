"""gpu_check's summary: what each stage found, as JSON fields and one markdown page."""

import json
import pathlib

# Committed CPU references of the end-to-end runs (benchmarks/gpu/e2e_reference.py).
REFERENCES = sorted((pathlib.Path(__file__).resolve().parents[1] / "results").glob(
    "cpu-*/e2e_reference.json"))

# The GPU goal of issue 22: best JAX >= 1.3x best PyTorch on classic, at >= 50% of the
# bf16 matmul peak measured in the same run.
GOAL_RATIO, GOAL_MFU = 1.3, 0.5


def _fmt(value, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def _best(results, framework: str):
  done = [r for r in results if r["framework"] == framework and r["status"] == "ok"]
  return max(done, key=lambda r: r["img_per_s"]["median"]) if done else None


def throughput_summary(data) -> dict:
  """The headline of one throughput report (throughput.run's data)."""
  results, config = data["results"], data["config"]
  bf16_peak = data["peak"]["peak_gflops"].get("bf16")
  summary = {"report": f"{data['preset']}.md", "protocol": data["protocol"],
             "config": {k: config[k] for k in ("features", "depth", "height", "width", "batch")},
             "peak_bf16_gflops": bf16_peak,
             "ratio_jax_to_best_torch": data["summary"]["ratio_jax_to_best_torch"],
             "variants": {r["variant"]: (r["img_per_s"]["median"] if r["status"] == "ok"
                                         else r["error"]) for r in results},
             "failed_variants": [r["variant"] for r in results if r["status"] != "ok" and
                                 not r["error"].startswith("not built")]}
  for framework in ("jax", "torch"):
    best = _best(results, framework)
    summary[f"best_{framework}"] = best and {
        "variant": best["variant"], "img_per_s": best["img_per_s"]["median"],
        "step_ms": best["step_ms_median"], "mfu_own_dtype": best["mfu"],
        "mfu_bf16_peak": best["achieved_gflops"] / bf16_peak if bf16_peak else None}
  best_jax, ratio = summary["best_jax"], summary["ratio_jax_to_best_torch"]
  if data["preset"] == "classic" and best_jax and ratio is not None:
    summary["goal"] = {"ratio": ratio >= GOAL_RATIO,
                       "mfu": (best_jax["mfu_bf16_peak"] or 0) >= GOAL_MFU}
  return summary


def summarize(data) -> dict:
  """Which checks, stages and variants failed, and which stages were skipped."""
  failed_checks = [name for name, result in data["checks"].items()
                   if isinstance(result, dict) and "passed" in result and not result["passed"]]
  stages = data["stages"]
  failed_stages = [name for name, record in stages.items() if record["status"] == "failed"]
  failed_variants = [f"{preset}:{name}" for preset, summary in data["throughput"].items()
                     for name in summary["failed_variants"]]
  return {"all_passed": not (failed_checks or failed_stages or failed_variants),
          "failed_checks": failed_checks, "failed_stages": failed_stages,
          "failed_variants": failed_variants,
          "skipped_stages": {name: record.get("reason") for name, record in stages.items()
                             if record["status"] == "skipped"}}


def _check_numbers(result: dict) -> str:
  if "error" in result:
    return f"error: {result['error'][:120]}"
  parts = []
  for key, value in result.items():
    if key in ("passed", "traceback"):
      continue
    if isinstance(value, dict):
      inner = ", ".join(f"{k} {_fmt(v, '.3g') if isinstance(v, float) else v}"
                        for k, v in value.items() if k != "passed")
      parts.append(f"{key}: {inner}")
    else:
      parts.append(f"{key} {_fmt(value, '.3g') if isinstance(value, float) else value}")
  return "; ".join(parts)


def _environment_lines(data) -> list[str]:
  env, device = data["environment"], data["device"]
  versions, smi = env["versions"], env.get("nvidia_smi") or {}
  info = data.get("device_info") or {}
  lines = [f"- Device: {device['name']} (`{data['slug']}`, {device['cores']} host cores)" +
           (f"; driver {smi.get('driver_version')}, {smi.get('memory.total')}, compute "
            f"capability {smi.get('compute_cap')}, max SM clock {smi.get('clocks.max.sm')}, "
            f"power limit {smi.get('power.limit')}" if smi else "") + ".",
           f"- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                       if v and k != "platform") +
           (f"; torch CUDA {info.get('torch_cuda')}, cuDNN {info.get('torch_cudnn')}"
            if info.get("torch_cuda") else "") + ".",
           f"- JAX backend {info.get('jax_backend')} ({info.get('jax_device_kind')}); "
           f"XLA_FLAGS={env['env'].get('XLA_FLAGS')!r}; other settings "
           f"{ {k: v for k, v in env['env'].items() if v and k != 'XLA_FLAGS'} }.",
           f"- Started {env['started_utc']}, {env.get('wall_s', 0):.0f} s in all, budget "
           f"{data['budget']['budget_s']:.0f} s; command `{env['command']}`."]
  if len(env.get("runs", [])) > 1:  # merge_runs.py: a full run and its reruns.
    lines.append("- Merged from these runs, each stage's last run: " + "; ".join(
        f"{run['started_utc'][11:16]} UTC, {run['wall_s']:.0f} s, `{run['command']}`"
        for run in env["runs"]) + ".")
  return lines


def _throughput_lines(data) -> list[str]:
  if not data["throughput"]:
    return ["No throughput stage ran."]
  lines = ["| preset | model, batch | best JAX | img/s | MFU (bf16 peak) | best PyTorch | "
           "img/s | JAX / PyTorch | report |", "|---|---|---|---:|---:|---|---:|---:|---|"]
  for preset, summary in data["throughput"].items():
    config, jax_best, torch_best = summary["config"], summary["best_jax"], summary["best_torch"]
    lines.append(
        f"| {preset} | {config['features']}->{config['features'] * 2**config['depth']}, "
        f"{config['height']}x{config['width']}, batch {config['batch']} | "
        f"{jax_best and jax_best['variant']} | {_fmt(jax_best and jax_best['img_per_s'], '.1f')}"
        f" | {_fmt(jax_best and jax_best['mfu_bf16_peak'], '.1%')} | "
        f"{torch_best and torch_best['variant']} | "
        f"{_fmt(torch_best and torch_best['img_per_s'], '.1f')} | "
        f"**{_fmt(summary['ratio_jax_to_best_torch'], '.2f')}x** | [{summary['report']}]"
        f"({summary['report']}) |")
  classic = data["throughput"].get("classic", {})
  if "goal" in classic:
    goal = classic["goal"]
    lines += ["", f"Goal on classic (best JAX >= {GOAL_RATIO}x best PyTorch, at >= "
              f"{GOAL_MFU:.0%} of the measured bf16 peak "
              f"{_fmt(classic['peak_bf16_gflops'] and classic['peak_bf16_gflops'] / 1e3, '.0f')}"
              f" TFLOP/s): ratio {'met' if goal['ratio'] else '**not met**'}, MFU "
              f"{'met' if goal['mfu'] else '**not met**'}."]
  protocol = next(iter(data["throughput"].values()))["protocol"]
  lines += ["", f"Protocol (budgeted): {protocol['warmup_steps']} warm-up steps, "
            f"{protocol['repeats']} rounds of {protocol['timed_steps']} timed steps per variant, "
            "interleaved; one process per variant, imports overlapped, builds one at a time; "
            f"torch.compile mode `{data['protocol']['torch_compile_mode']}`."]
  return lines


def _e2e_lines(data) -> list[str]:
  if not data["e2e"]:
    return ["No end-to-end run finished."]
  lines = ["| run | steps, dtype, batch | train s | step ms with pipeline | device only | "
           "loop alone: put inline, ahead | device waits for data | "
           "pipeline alone img/s: threads, processes | final validation |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
  for name, run in data["e2e"].items():
    scores = ", ".join(f"{k} {v:.4f}" for k, v in run["final_scores"].items()
                       if k in ("loss", "dice", "iou", "tgs_map"))
    lines.append(
        f"| {name} | {run['steps']}, {run['dtype']}, {run['batch_size']} | "
        f"{run['train_wall_s']:.1f} | {_fmt(run['step_ms_with_pipeline'], '.2f')} | "
        f"{run['step_ms_device_only']:.2f} | {_fmt(run.get('step_ms_loop_put_inline'), '.2f')}"
        f", {_fmt(run.get('step_ms_loop_put_ahead'), '.2f')} | "
        f"{_fmt(run['data_wait_share'], '.0%')} | "
        f"{run['pipeline_only_img_per_s']:.0f}, {run['pipeline_processes_img_per_s']:.0f} "
        f"({run['pipeline_processes']} workers) | {scores} |")
  lines += ["", "Step time with the pipeline: the trainer's own measurement between log steps "
            "(metrics.jsonl, evaluations excluded), median of windows; device only: the same "
            "jitted step on one batch held on the device; loop alone: that step fed by the "
            "trainer's iterator (no logging, no evaluation), batches put on the device inline "
            "or 2 ahead by background threads; the device waits for data "
            "1 - device only / with pipeline of the time. The trainer's batches put ahead "
            "(config.device_prefetch; 0 = inline, as every run before it existed): " + ", ".join(
                f"{name} {run['grain'].get('device_prefetch', 0)}"
                for name, run in data["e2e"].items()) + "."]
  return lines + _cpu_reference_lines(data)


def _cpu_reference_lines(data, references=None) -> list[str]:
  """Each e2e run's validation scores against a committed CPU reference of the same config."""
  from benchmarks.gpu import e2e_reference  # pylint: disable=import-outside-toplevel
  lines = []
  for path in REFERENCES if references is None else references:
    reference = json.loads(pathlib.Path(path).read_text())
    for name, run in data["e2e"].items():
      cpu = reference["datasets"].get(name)
      keys = ("steps", "batch_size", "image_size", "model")
      if not cpu or any(cpu["gpu_run"].get(k) != run.get(k) for k in keys):
        continue  # Another config (a dry run's, an older script's).
      rows = e2e_reference.compare(run, cpu["cpu_runs"])
      report = f"../{pathlib.Path(path).parent.name}/e2e_reference.md"
      lines.append(
          f"- {name} against the CPU ({reference['device']['name']}, {reference['dtype']}, "
          f"seeds {reference['seeds']}, [report]({report})): " + "; ".join(
              f"{metric} {row['gpu']:.4f} against {row['cpu_mean']:.4f} +- "
              f"{row['cpu_std']:.4f} (same seed {row['cpu_same_seed']:.4f}): "
              + ("within noise" if row["within_noise"] else "**outside the seeds' spread**")
              for metric, row in rows.items()) + ".")
  return ["", *lines] if lines else []


def _profile_lines(data) -> list[str]:
  profiles = data.get("profile") or {}
  if not profiles:
    return ["Not run (run only where classic misses its goal)."]
  lines = []
  for preset, result in profiles.items():
    if not result["lines"]:
      lines.append(f"{preset}: the trace held no events.")
      continue
    busiest = result["lines"][0]
    lines += [f"{preset}, {result['dtype']}: {result['wall_ms_per_step']:.2f} ms a step (wall); "
              f"busiest timeline `{busiest['line']}` {busiest['busy_ms_per_step']:.2f} ms a "
              f"step; its top kernels ([profile_{preset}.md](profile_{preset}.md)):", ""]
    lines += [f"- `{k['name'][:100]}`: {k['ms_per_step']:.3f} ms ({k['share']:.1%})"
              + (f", HLO {k['hlo_op']}" if k["hlo_op"] else "") for k in busiest["kernels"][:5]]
  return lines


def markdown(data) -> str:
  """The whole report as one markdown page."""
  summary = data.get("summary") or summarize(data)
  title = f"# GPU check: {data['device']['name']}" + (" (dry run)" if data["dry_run"] else "")
  checks = {k: v for k, v in data["checks"].items() if k != "shape"}
  lines = [title, "", *_environment_lines(data), "", "## Checks", ""]
  if checks:
    lines += ["| check | result | numbers |", "|---|---|---|"]
    lines += [f"| {name} | {'pass' if r['passed'] else '**FAIL**'} | {_check_numbers(r)} |"
              for name, r in checks.items()]
  else:
    lines.append("No check ran.")
  lines += ["", "## Train-step throughput", "", *_throughput_lines(data), "",
            "## End-to-end training", "", *_e2e_lines(data), "",
            "## Where the JAX step's time goes", "", *_profile_lines(data), "",
            "## Stages", "",
            "| stage | status | seconds | note |", "|---|---|---:|---|"]
  for name, record in data["stages"].items():
    note = record.get("error") or record.get("reason") or ""
    lines.append(f"| {name} | {record['status']} | {record['seconds']:.0f} | {note[:150]} |")
  lines += ["", "All passed." if summary["all_passed"] else
            f"**Failures**: checks {summary['failed_checks']}, stages "
            f"{summary['failed_stages']}, variants {summary['failed_variants']}.", ""]
  return "\n".join(lines)
