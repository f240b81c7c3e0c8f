"""The whole project on one GPU in one command: checks, step throughput, end-to-end training.

  bash benchmarks/gpu/gpu_check.sh                  # on the GPU machine: installs .whl/, then
  python benchmarks/gpu/gpu_check.py --out "$OUT" --tgs_dir .gpu_data/tgs
  python benchmarks/gpu/gpu_check.py --dry-run --out /tmp/x --tgs_dir ../shared/data/tgs  # CPU

Stages, in this order, each in processes of its own so that none holds the GPU for the next
(the GPU's time is short, so the most wanted come first):
  checks               device_checks.py: conv_impl=auto -> XLA, a finite train step, the
                       Flax U-Net against its PyTorch twin on the device (fp32, TF32, bf16);
  throughput:classic   throughput.py's train-step benchmark: JAX fp32/bf16 against PyTorch
                       eager NCHW, channels_last, autocast bf16 and torch.compile bf16, MFU
                       against the bf16 matmul peak measured in the same run;
  e2e:tgs, e2e:synthetic   gpu_e2e.py: configs/synthetic.py and configs/tgs.py (the TGS sample,
                       prepared on the machine from --tgs_dir) trained by the project's
                       trainer, step time with and without the input pipeline, scores;
  profile:classic      step_profile.py, only where classic missed its goal (and in the dry
                       run): a few JAX bf16 steps traced by jax.profiler, the kernels ranked
                       by device time, so the one GPU run already names what costs JAX;
  throughput:tgs, throughput:carvana.
A stage that fails is recorded and the next one runs. Every stage has a time cap, and one
that could no longer finish within --budget_s is skipped (the report says so; rerun it with
--only). After every stage the reports are rewritten: <out>/gpu_check.{json,md} and
<out>/results.tar.gz, which holds <slug>/ (e.g. gpu-h200/) with every report, ready to unpack
into benchmarks/results/. --dry-run: tiny models, a few steps, on whatever device is there.
"""

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

if __package__ in (None, ""):  # `python benchmarks/gpu/gpu_check.py` from anywhere.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

# Light imports only: every spawned child imports this module again.
from benchmarks.gpu import gpu_check_report  # pylint: disable=wrong-import-position
from benchmarks import machine

SCHEMA_VERSION = 1
STAGES = ("checks", "throughput:classic", "e2e:tgs", "e2e:synthetic", "profile:classic",
          "throughput:tgs", "throughput:carvana")
# stage: (cap_s, min_s): the most it may take, and the least budget left to start it. Sized by
# the first H200 run (2026-12-04): checks 68 s; classic's JAX variants 45-50 s to the first
# step each, torch's 10 s (torch.compile more); e2e:tgs's trainer 71 s to its first step. The
# second lease's e2e took 62 and 146 s, before the loop timings (put inline, ahead) were added.
BUDGET = {"checks": (90, 20), "throughput:classic": (300, 120), "e2e:synthetic": (85, 40),
          "e2e:tgs": (165, 100), "profile:classic": (75, 45), "throughput:tgs": (100, 60),
          "throughput:carvana": (120, 70)}
# Seconds of a throughput stage kept for timing, peak and report once its variants are built.
TIMING_RESERVE = {"classic": 45, "tgs": 20, "carvana": 30}
# The goal's contenders first (each framework's fastest), so a stage short of time drops
# fp32 variants, not the comparison (the first H200 run built JAX fp32 before torch's bf16).
GPU_VARIANTS = ("jax_bf16", "torch_autocast_bf16_cl", "torch_compile_bf16",
                "jax_bf16_auto_layouts", "jax_bf16_first_gpu_run", "jax_fp32", "torch_eager_cl",
                "torch_eager_nchw")
DRY_VARIANTS = ("jax_bf16", "jax_bf16_auto_layouts", "torch_eager_cl")
GPU_PROTOCOL = {"warmup_steps": 10, "timed_steps": 30, "repeats": 3}
DRY_PROTOCOL = {"warmup_steps": 1, "timed_steps": 2, "repeats": 1}
TINY_SPEC = {"features": 4, "depth": 2, "height": 16, "width": 16, "batch": 2}
FINALIZE_S = 15  # Kept at the end of the budget for the last reports.


@dataclasses.dataclass
class Session:
  """The run's settings, its clock and everything it has found so far."""

  args: argparse.Namespace
  device: dict
  staging: pathlib.Path  # <staging>/<slug>/ is what results.tar.gz holds.
  work: pathlib.Path  # Workdirs and prepared data; not kept.
  start: float
  data: dict

  @property
  def results(self) -> pathlib.Path:
    return self.staging / self.data["slug"]

  def left(self) -> float:
    return self.start + self.args.budget_s - FINALIZE_S - time.perf_counter()


def log(text: str) -> None:
  print(text, flush=True)


def nvidia_smi() -> dict:
  """Name, driver, memory, compute capability, clocks and power limit of the first GPU, each
  field asked for on its own (a driver that lacks one still gives the rest); {} without
  nvidia-smi."""
  found = {}
  for field in ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm",
                "power.limit"):
    try:
      done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
      continue
    if done.stdout.strip():
      found[field] = done.stdout.splitlines()[0].strip()
  if found:
    found["text"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30,
                                   check=False).stdout
  return found


def _call(conn, module: str, function: str, kwargs: dict) -> None:
  """Child process body: benchmarks.<module>.<function>(**kwargs) -> ('ok', result)."""
  try:
    import importlib  # pylint: disable=import-outside-toplevel
    result = getattr(importlib.import_module(f"benchmarks.{module}"), function)(**kwargs)
    conn.send(("ok", result))
  except Exception:  # pylint: disable=broad-except
    conn.send(("error", traceback.format_exc(limit=8)))


def in_child(module: str, function: str, timeout_s: float, **kwargs):
  """Runs a function in a fresh spawned process; its result, or RuntimeError saying why not."""
  context = multiprocessing.get_context("spawn")
  parent, child = context.Pipe()
  # Not a daemon: the trainer's grain pipeline may start worker processes of its own.
  process = context.Process(target=_call, args=(child, module, function, kwargs))
  process.start()
  try:
    if not parent.poll(timeout_s):
      raise RuntimeError(f"no result within {timeout_s:.0f} s (the stage's share of the budget)")
    status, payload = parent.recv()
  except EOFError:
    process.join(timeout=5)
    raise RuntimeError(f"the process died (exit code {process.exitcode})") from None
  finally:
    if process.is_alive():
      process.join(timeout=10)
    if process.is_alive():
      process.kill()
  if status != "ok":
    raise RuntimeError(payload)
  return payload


def stage_checks(session: Session, allowed_s: float) -> None:
  found = in_child("gpu.device_checks", "run", allowed_s, tiny=session.args.dry_run)
  session.data["device_info"] = found["device"]
  session.data["checks"] = {"shape": found["shape"], **found["checks"]}


def stage_throughput(session: Session, preset: str, allowed_s: float) -> None:
  from benchmarks.step import throughput  # pylint: disable=import-outside-toplevel
  args = session.args
  protocol = DRY_PROTOCOL if args.dry_run else GPU_PROTOCOL
  overrides = {"torch_compile_mode": args.torch_compile_mode,
               **(TINY_SPEC if args.dry_run else {})}
  names = args.variants or (DRY_VARIANTS if args.dry_run else GPU_VARIANTS)
  reserve = 0 if args.dry_run else TIMING_RESERVE[preset]
  note = ("gpu_check" + (" dry run" if args.dry_run else "") +
          f": budgeted protocol; torch.compile mode {args.torch_compile_mode}; fp32 variants "
          "keep each framework's default precision (TF32 convolutions on Ampere and newer)")
  data = throughput.run(preset, out_dir=session.staging, variant_names=names,
                        ready_timeout=allowed_s, spec_overrides=overrides,
                        deadline=time.perf_counter() + allowed_s - reserve,
                        overlap_imports=True, slug=session.data["slug"], note=note,
                        matmul_size=512 if args.dry_run else None, **protocol)
  session.data["throughput"][preset] = gpu_check_report.throughput_summary(data)


def stage_e2e(session: Session, dataset: str, allowed_s: float) -> None:
  args = session.args
  if dataset == "tgs" and not args.tgs_dir:
    raise RuntimeError("no --tgs_dir: pass a copy of the TGS sample (train/, depths.csv)")
  dtype = args.e2e_dtype or ("bfloat16" if session.device["platform"] == "gpu" else "float32")
  workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"e2e_{dataset}_", dir=session.work))
  session.data["e2e"][dataset] = in_child(
      "gpu.gpu_e2e", "run", allowed_s, dataset=dataset, steps=args.e2e_steps, dtype=dtype,
      tiny=args.dry_run, workdir=str(workdir), tgs_dir=args.tgs_dir,
      plots_dir=str(session.results))


def stage_profile(session: Session, preset: str, allowed_s: float) -> None:
  # The fastest JAX step of the throughput stage: what is left to gain is in its kernels.
  best = (session.data["throughput"].get(preset, {}).get("best_jax") or {}).get("variant")
  session.data["profile"][preset] = in_child(
      "gpu.step_profile", "run", allowed_s, preset=preset, tiny=session.args.dry_run,
      out_dir=str(session.results), trace_dir=session.args.out,
      auto_layouts=best == "jax_bf16_auto_layouts")


def profile_not_needed(session: Session, preset: str) -> str | None:
  """Why the profile of `preset` can be skipped (it met its goal), or None."""
  goal = session.data["throughput"].get(preset, {}).get("goal")
  if (session.args.dry_run or session.args.profile == "always" or not goal
      or not (goal["ratio"] and goal["mfu"])):
    return None
  return f"{preset} met its goal: no profile needed"


def run_stage(session: Session, stage: str) -> None:
  """Runs one stage within its share of the budget and records how it went."""
  cap, minimum = BUDGET[stage]
  record = session.data["stages"][stage] = {"status": "skipped", "seconds": 0.0}
  if stage not in session.args.only:
    record["reason"] = "not asked for (--only)"
    return
  kind, _, name = stage.partition(":")
  reason = profile_not_needed(session, name) if kind == "profile" else None
  if reason:
    record["reason"] = reason
    log(f"== {stage}: skipped ({record['reason']})")
    return
  left = session.left()
  if left < minimum and not session.args.dry_run:
    record["reason"] = f"{left:.0f} s of the budget left, the stage needs {minimum} s"
    log(f"== {stage}: skipped ({record['reason']})")
    return
  allowed = cap if session.args.dry_run else min(cap, left)
  log(f"== {stage} (up to {allowed:.0f} s)")
  start = time.perf_counter()
  try:
    if kind == "checks":
      stage_checks(session, allowed)
    elif kind == "throughput":
      stage_throughput(session, name, allowed)
    elif kind == "profile":
      stage_profile(session, name, allowed)
    else:
      stage_e2e(session, name, allowed)
    record.update(status="ok")
  except Exception as e:  # pylint: disable=broad-except
    record.update(status="failed", error=str(e).strip().splitlines()[-1],
                  traceback=traceback.format_exc(limit=8))
    log(f"   {stage} FAILED: {record['error']}")
  record["seconds"] = time.perf_counter() - start


def write_reports(session: Session) -> list[pathlib.Path]:
  """<slug>/gpu_check.{json,md} in the staging folder, their copies and the tar in --out."""
  data = session.data
  data["environment"]["wall_s"] = time.perf_counter() - session.start
  data["summary"] = gpu_check_report.summarize(data)
  session.results.mkdir(parents=True, exist_ok=True)
  (session.results / "gpu_check.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
  (session.results / "gpu_check.md").write_text(gpu_check_report.markdown(data))
  out = pathlib.Path(session.args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name in ("gpu_check.json", "gpu_check.md"):
    shutil.copyfile(session.results / name, out / name)
  partial = out / "results.tar.gz.partial"
  with tarfile.open(partial, "w:gz") as archive:
    archive.add(session.results, arcname=data["slug"])
  partial.replace(out / "results.tar.gz")
  return [out / "gpu_check.json", out / "gpu_check.md", out / "results.tar.gz"]


def start_session(args) -> Session:
  device = machine.detect_device()
  smi = nvidia_smi()
  environment = machine.environment()
  log(f"device: {device['name']} ({device['platform']}, {device['cores']} cores)")
  if smi:
    log(smi["text"])
  versions = machine.versions()
  log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
  log(f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}; env {json.dumps(environment['env'])}")
  root = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_"))
  if device["platform"] == "gpu":
    # One persistent compilation cache, XLA's autotuning results included, for every stage's
    # processes: a step already compiled (the profile's, the same convolutions in another
    # variant) is not autotuned again on the lease's clock. Timings are unaffected.
    for name, value in (("JAX_COMPILATION_CACHE_DIR", str(root / "xla_cache")),
                        ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                        ("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES",
                         "xla_gpu_per_fusion_autotune_cache_dir")):
      os.environ.setdefault(name, value)
  data = {
      "schema_version": SCHEMA_VERSION, "benchmark": "gpu_check", "dry_run": args.dry_run,
      "slug": device["slug"], "device": device,
      "environment": {"started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"),
                      "nvidia_smi": {k: v for k, v in smi.items() if k != "text"},
                      "versions": versions, "env": environment["env"],
                      "loadavg_start": environment["loadavg"], "command": " ".join(sys.argv)},
      "budget": {"budget_s": args.budget_s, "caps": BUDGET, "timing_reserve": TIMING_RESERVE},
      "protocol": {"throughput": DRY_PROTOCOL if args.dry_run else GPU_PROTOCOL,
                   "torch_compile_mode": args.torch_compile_mode, "e2e_steps": args.e2e_steps},
      "stages": {}, "checks": {}, "throughput": {}, "e2e": {}, "profile": {},
  }
  session = Session(args=args, device=device, staging=root / "results", work=root / "work",
                    start=time.perf_counter(), data=data)
  session.results.mkdir(parents=True)
  session.work.mkdir()
  return session


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.environ.get("OUT"),
                      help="Where the reports go (default: $OUT).")
  parser.add_argument("--dry-run", action="store_true",
                      help="Tiny models and a few steps: checks the script itself in seconds.")
  parser.add_argument("--tgs_dir", default=None,
                      help="The TGS sample in its download layout (train/images, train/masks, "
                           "depths.csv), e.g. a copy in .gpu_data/tgs.")
  parser.add_argument("--budget_s", type=float, default=540.0,
                      help="Seconds the whole run may take; stages that no longer fit are "
                           "skipped.")
  parser.add_argument("--only", default=",".join(STAGES),
                      help=f"Comma-separated stages to run, of {', '.join(STAGES)}.")
  parser.add_argument("--variants", nargs="+", default=None,
                      help="Throughput variants (default: JAX fp32/bf16 and five PyTorch).")
  parser.add_argument("--torch_compile_mode", default="default",
                      help="torch.compile mode of torch_compile_bf16 (max-autotune takes "
                           "minutes of GPU time to compile).")
  parser.add_argument("--profile", choices=("missed_goal", "always"), default="missed_goal",
                      help="When profile:classic runs: only where classic missed its goal "
                           "(default), or always (to see where a faster step's time goes).")
  parser.add_argument("--e2e_steps", type=int, default=None,
                      help="Training steps of each end-to-end run (default 300; 8 dry).")
  parser.add_argument("--e2e_dtype", default=None,
                      help="Compute dtype of the end-to-end runs (default: bfloat16 on a GPU, "
                           "float32 elsewhere).")
  args = parser.parse_args(argv)
  if not args.out:
    parser.error("no output folder: pass --out DIR (or set $OUT)")
  args.only = [s.strip() for s in args.only.split(",") if s.strip()]
  unknown = sorted(set(args.only) - set(STAGES))
  if unknown:
    parser.error(f"unknown stage(s) {', '.join(unknown)} in --only; choose from "
                 f"{', '.join(STAGES)}")
  if args.tgs_dir and not (pathlib.Path(args.tgs_dir) / "train").is_dir():
    parser.error(f"--tgs_dir {args.tgs_dir} has no train/ folder; pass the TGS sample's "
                 "folder (train/images, train/masks, depths.csv)")
  if args.e2e_steps is None:
    args.e2e_steps = 8 if args.dry_run else 300
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  session = start_session(args)
  try:
    for stage in STAGES:
      run_stage(session, stage)
      write_reports(session)
  finally:
    shutil.rmtree(session.work, ignore_errors=True)
  paths = write_reports(session)
  log(gpu_check_report.markdown(session.data))
  log(f"wrote {', '.join(str(p) for p in paths)}")
  shutil.rmtree(session.staging.parent, ignore_errors=True)
  return 0 if session.data["summary"]["all_passed"] else 1


if __name__ == "__main__":
  sys.exit(main())
