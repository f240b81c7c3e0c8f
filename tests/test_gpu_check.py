"""benchmarks/gpu/gpu_check.py, the one command a GPU session runs: its dry run end to end on
the CPU (tiny models, a few steps), and its budget and argument handling."""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from tests import _data_samples
from tests.conftest import REPO

pytest.importorskip("torch")
gpu_check = pytest.importorskip("benchmarks.gpu.gpu_check")
# pylint: disable=wrong-import-position
from benchmarks.gpu import device_checks, gpu_check_report
from benchmarks import machine

SCRIPT = REPO / "benchmarks" / "gpu" / "gpu_check.py"
# e2e:synthetic runs the same code as e2e:tgs (less the prepare step): left out for time.
DRY_STAGES = ("checks", "throughput:classic", "e2e:tgs", "profile:classic")


@pytest.mark.slow
def test_dry_run_writes_every_report(tgs_dir, tmp_path):
  tgs = _data_samples.tgs_layouts(tgs_dir, tmp_path / "tgs", count=50)[1]
  out = tmp_path / "out"
  # The suite's LLVM -O0 (conftest) is inherited: the numbers mean nothing here.
  command = [sys.executable, str(SCRIPT), "--dry-run", f"--out={out}", f"--tgs_dir={tgs}",
             f"--only={','.join(DRY_STAGES)}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.md", "results.tar.gz",
                                             "profile_classic.perfetto_trace.json.gz",
                                             "profile_classic.hlo.txt.gz"}
  data = json.loads((out / "gpu_check.json").read_text())

  slug = machine.detect_device()["slug"]
  assert data["benchmark"] == "gpu_check" and data["dry_run"] and data["slug"] == slug
  assert data["environment"]["versions"]["jax"] and "XLA_FLAGS" in data["environment"]["env"]
  assert {name: r["status"] for name, r in data["stages"].items()} == {
      name: "ok" if name in DRY_STAGES else "skipped" for name in gpu_check.STAGES}
  assert data["summary"]["all_passed"], data["summary"]

  checks = {k: v for k, v in data["checks"].items() if k != "shape"}
  assert set(checks) == set(device_checks.CHECKS)
  assert all(result["passed"] for result in checks.values())
  assert checks["conv_impl_auto"]["backend"] == data["device_info"]["jax_backend"]
  assert checks["parity_fp32"]["eval"]["max_error"] < device_checks.FP32_MAX_ERROR
  assert 0 < checks["parity_bf16"]["train"]["l2_error"] < device_checks.BF16_L2_ERROR

  classic = data["throughput"]["classic"]
  assert classic["best_jax"]["variant"] in ("jax_bf16", "jax_bf16_auto_layouts")
  assert classic["variants"]["jax_bf16_auto_layouts"] > 0  # Built, stepped, timed.
  assert classic["best_torch"]["variant"] == "torch_eager_cl"
  assert classic["ratio_jax_to_best_torch"] > 0 and classic["peak_bf16_gflops"] > 0
  assert set(classic["goal"]) == {"ratio", "mfu"} and not classic["failed_variants"]

  run = data["e2e"]["tgs"]
  assert run["steps"] == 8 and run["dtype"] == "float32" and run["prepare_s"] > 0
  assert 0 <= run["final_scores"]["iou"] <= 1 and 0 <= run["final_scores"]["tgs_map"] <= 1
  assert [point["step"] for point in run["val_curve"]] == [4, 8]
  assert run["step_ms_device_only"] > 0 and run["pipeline_only_img_per_s"] > 0
  assert run["pipeline_processes_img_per_s"] > 0 and run["pipeline_processes"] >= 1
  assert run["step_ms_with_pipeline"] > 0 and 0 <= run["data_wait_share"] <= 1
  assert run["step_ms_loop_put_inline"] > 0 and run["step_ms_loop_put_ahead"] > 0
  assert run["grain"]["device_prefetch"] == 0  # configs/default.py's auto, resolved on a CPU.

  profile = data["profile"]["classic"]  # The CPU has no device timeline: host threads.
  assert not profile["device_timelines"] and profile["steps"] == 5 and profile["lines"]
  assert profile["wall_ms_per_step"] > 0 and profile["lines"][0]["kernels"][0]["ms_per_step"] > 0
  assert profile["hlo_layout_changes"]["count"] >= len(profile["hlo_layout_changes"]["largest"])
  # The profile traces the throughput stage's fastest JAX step.
  assert (profile["auto_layouts"] is not None) == (
      classic["best_jax"]["variant"] == "jax_bf16_auto_layouts")

  with tarfile.open(out / "results.tar.gz") as archive:
    names = set(archive.getnames())
    inner = json.load(archive.extractfile(f"{slug}/gpu_check.json"))
  expected = {f"{slug}/{n}" for n in ("gpu_check.json", "gpu_check.md", "classic.json",
                                      "classic.md", "classic.png", "e2e_tgs_loss.png",
                                      "profile_classic.json", "profile_classic.md")}
  assert expected <= names and inner["summary"] == data["summary"]
  markdown = (out / "gpu_check.md").read_text()
  for section in ("## Checks", "## Train-step throughput", "## End-to-end training",
                  "## Where the JAX step's time goes", "## Stages", "| parity_fp32 | pass |",
                  "All passed.", "0 = inline, as every run before it existed): tgs 0."):
    assert section in markdown

  # The CPU reference of the e2e run: here the "GPU" run is a CPU run too, so the reference's
  # first seed (the run's own) must reproduce its scores exactly, and a second seed differ.
  from benchmarks.gpu import e2e_reference  # pylint: disable=import-outside-toplevel
  reference = e2e_reference.run(out / "gpu_check.json", tmp_path / "reference", tgs,
                                num_seeds=2, datasets=("tgs",))
  rows = reference["datasets"]["tgs"]["comparison"]
  assert set(rows) == set(e2e_reference.METRICS) and reference["seeds"] == [0, 1]
  assert all(row["paired_difference"] == 0 and row["within_noise"] for row in rows.values())
  assert rows["dice"]["cpu_seeds"][0] != rows["dice"]["cpu_seeds"][1]
  assert {p.name for p in (tmp_path / "reference").iterdir()} == {
      f"e2e_reference.{ext}" for ext in ("json", "md", "png")}


def _session(tmp_path, **overrides):
  args = argparse.Namespace(**{"dry_run": False, "budget_s": 480.0, "only": list(gpu_check.STAGES),
                               "out": str(tmp_path), "tgs_dir": None, "e2e_steps": 8,
                               "e2e_dtype": None, "profile": "missed_goal", **overrides})
  data = {"slug": "cpu-test", "stages": {}, "checks": {}, "throughput": {}, "e2e": {},
          "profile": {}}
  return gpu_check.Session(args=args, device={"platform": "cpu"}, staging=tmp_path,
                           work=tmp_path, start=time.perf_counter(), data=data)


def _summary(session):
  return gpu_check_report.summarize(session.data)


def test_a_stage_that_no_longer_fits_the_budget_is_skipped(tmp_path):
  session = _session(tmp_path, budget_s=gpu_check.FINALIZE_S + 30)
  gpu_check.run_stage(session, "throughput:carvana")  # Needs 70 s; 30 are left.
  record = session.data["stages"]["throughput:carvana"]
  assert record["status"] == "skipped" and "the stage needs 70 s" in record["reason"]
  assert "throughput:carvana" in _summary(session)["skipped_stages"]


def test_a_failed_stage_is_recorded_and_the_run_goes_on(tmp_path):
  session = _session(tmp_path)
  gpu_check.run_stage(session, "e2e:tgs")  # No --tgs_dir: fails before starting anything.
  record = session.data["stages"]["e2e:tgs"]
  assert record["status"] == "failed" and "no --tgs_dir" in record["error"]
  summary = _summary(session)
  assert summary["failed_stages"] == ["e2e:tgs"] and not summary["all_passed"]


@pytest.mark.parametrize("goal, runs", [({"ratio": True, "mfu": True}, False),
                                         ({"ratio": False, "mfu": True}, True),
                                         ({"ratio": True, "mfu": False}, True), (None, True)])
def test_the_profile_runs_only_where_classic_misses_its_goal(goal, runs, tmp_path, monkeypatch):
  session = _session(tmp_path)
  if goal is not None:
    session.data["throughput"]["classic"] = {"goal": goal}
  ran = []
  monkeypatch.setattr(gpu_check, "stage_profile", lambda *a: ran.append(a[1]))
  gpu_check.run_stage(session, "profile:classic")
  record = session.data["stages"]["profile:classic"]
  assert (record["status"], ran) == (("ok", ["classic"]) if runs else ("skipped", []))
  if not runs:
    assert "met its goal" in record["reason"]


def test_profile_always_runs_the_profile_even_where_classic_met_its_goal(tmp_path, monkeypatch):
  session = _session(tmp_path, profile="always")
  session.data["throughput"]["classic"] = {"goal": {"ratio": True, "mfu": True}}
  ran = []
  monkeypatch.setattr(gpu_check, "stage_profile", lambda *a: ran.append(a[1]))
  gpu_check.run_stage(session, "profile:classic")
  assert ran == ["classic"]


def test_the_trace_summary_ranks_device_kernels_per_timeline():
  from benchmarks.gpu import step_profile  # pylint: disable=import-outside-toplevel
  def meta(kind, pid, name, tid=None):
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}
  def kernel(name, dur, tid=7, pid=2, **args):
    return {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": 0, "dur": dur, "args": args}
  events = [meta("process_name", 1, "/host:CPU"), meta("process_name", 2, "/device:GPU:0"),
            meta("thread_name", 2, "Stream #7(Compute)", 7), meta("thread_name", 2, "Memcpy", 8),
            kernel("python_step", 9000, tid=1, pid=1),  # Host: left out when devices exist.
            kernel("conv_wgrad", 3000, hlo_op="convolution.3"), kernel("conv_wgrad", 3000),
            kernel("bn_fusion", 2000, hlo_op="fusion.1"), kernel("copy", 500, tid=8)]
  found = step_profile.summarize_trace(events, steps=2)
  assert found["device_timelines"]
  stream, memcpy = found["lines"]
  assert stream["line"] == "/device:GPU:0 / Stream #7(Compute)"
  assert memcpy["line"] == "/device:GPU:0 / Memcpy"
  assert stream["busy_ms_per_step"] == pytest.approx(4.0)  # (3 + 3 + 2) ms over 2 steps.
  assert [(k["name"], k["ms_per_step"], k["calls_per_step"], k["hlo_op"])
          for k in stream["kernels"]] == [("conv_wgrad", 3.0, 1.0, "convolution.3"),
                                          ("bn_fusion", 1.0, 0.5, "fusion.1")]
  assert stream["kernels"][0]["share"] == pytest.approx(0.75)
  assert "| `conv_wgrad` | 3.000 | 75.0% | 1.0 | convolution.3 |" in step_profile.markdown(
      {"preset": "classic", "dtype": "bfloat16", "steps": 2, "device": "gpu:H200",
       "wall_ms_per_step": 5.0, **found})


def test_layout_changes_are_found_in_the_optimized_hlo_with_their_shapes():
  from benchmarks.gpu import step_profile  # pylint: disable=import-outside-toplevel
  hlo = """
  %p1 = f32[4,4]{1,0} parameter(1)
  %t.1 = bf16[32,64,8,8]{3,2,1,0} transpose(bf16[32,8,8,64]{3,2,1,0} %p0), dimensions={0,3,1,2}, metadata={op_name="jit(step)/up_0/transpose"}
  ROOT %c.2 = f32[4,4]{0,1} copy(%p1)
  %c.3 = f32[4,4]{1,0} copy(f32[4,4]{1,0} %p2)
  %fused = bf16[2,3]{1,0} fusion(bf16[3,2]{1,0} %p3), kind=kInput, calls=%fused_transpose
  %t.4 = bf16[2,3]{1,0} transpose(%param_0), dimensions={1,0}
  """
  found = step_profile.hlo_layout_changes(hlo)
  assert found["count"] == 3 and found["elements"] == 32 * 64 * 8 * 8 + 16 + 6
  largest = found["largest"][0]
  assert (largest["op"], largest["dtype"], largest["shape"], largest["dimensions"],
          largest["op_name"]) == ("transpose", "bf16", [32, 64, 8, 8], "0,3,1,2",
                                  "jit(step)/up_0/transpose")
  assert found["largest"][1]["dimensions"] == "layout {1,0} -> {0,1}"  # The same-layout copy
  markdown = step_profile.markdown({"preset": "classic", "dtype": "bfloat16", "steps": 2,  # isn't.
                                    "device": "gpu", "wall_ms_per_step": 1.0, "lines": [],
                                    "device_timelines": [], "hlo_layout_changes": found})
  assert "## Layout changes in the optimized HLO: 3" in markdown


@pytest.mark.parametrize("argv,message", [
    (["--only", "checks,warp"], "unknown stage(s) warp"),
    (["--tgs_dir", "/nonexistent"], "has no train/ folder"),
])
def test_bad_arguments_are_refused_with_the_fix(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    gpu_check.parse_args(["--out", str(tmp_path), *argv])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_without_out_or_OUT_the_command_is_refused(monkeypatch, capsys):
  monkeypatch.delenv("OUT", raising=False)
  with pytest.raises(SystemExit):
    gpu_check.parse_args(["--dry-run"])
  assert "pass --out DIR (or set $OUT)" in capsys.readouterr().err


def test_the_compilation_cache_keeps_xla_autotuning_results(tmp_path):
  """runtime.enable_compilation_cache also turns on XLA's per-fusion autotune cache (GPU)."""
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import runtime  # pylint: disable=import-outside-toplevel
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_enable_xla_caches")
  before = {name: getattr(jax.config, name) for name in names}
  try:
    jax.config.update("jax_persistent_cache_enable_xla_caches", None)
    runtime.enable_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    assert jax.config.jax_persistent_cache_enable_xla_caches == (
        "xla_gpu_per_fusion_autotune_cache_dir")
  finally:
    for name, value in before.items():
      jax.config.update(name, value)


@pytest.mark.parametrize("from_env, expected", [(None, 0.5), ("0", 0.0)])
def test_the_cache_keeps_compiles_over_half_a_second_unless_jax_s_variable_says(
    from_env, expected, monkeypatch, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import runtime  # pylint: disable=import-outside-toplevel
  name = "jax_persistent_cache_min_compile_time_secs"
  before = {n: getattr(jax.config, n) for n in (name, "jax_compilation_cache_dir")}
  if from_env is None:
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  else:
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", from_env)
  try:
    jax.config.update(name, float(from_env or 1.0))  # What jax read from the variable.
    runtime.enable_compilation_cache(str(tmp_path))
    assert getattr(jax.config, name) == expected
  finally:
    for n, value in before.items():
      jax.config.update(n, value)


def test_nvidia_smi_fields_are_read_one_by_one(tmp_path, monkeypatch):
  """A driver's nvidia-smi that refuses one field (here compute_cap) still gives the rest."""
  fake = tmp_path / "nvidia-smi"
  fake.write_text('#!/bin/sh\ncase "$1" in\n'
                  '  --query-gpu=name) echo "NVIDIA H200" ;;\n'
                  '  --query-gpu=driver_version) echo "580.159.03" ;;\n'
                  '  --query-gpu=compute_cap) echo "Field is not valid" >&2; exit 2 ;;\n'
                  '  --query-gpu=*) echo "" ;;\n'
                  '  *) echo "full table" ;;\nesac\n')
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
  found = gpu_check.nvidia_smi()
  assert found == {"name": "NVIDIA H200", "driver_version": "580.159.03",
                   "text": "full table\n"}
  assert machine.detect_device()["slug"] == "gpu-h200"


def test_the_train_steps_parity_measures_both_frameworks_against_float64(monkeypatch):
  shape = device_checks._shape(tiny=True)
  result = device_checks.check_parity_train_steps(shape)
  assert result["passed"] and len(result["jax_fp32_vs_float64"]) == 3
  assert all(0 < e < 1e-2 for e in result["torch_fp32_vs_float64"])
  # A port mismatch (JAX reading its images mirrored) is far outside the bound.
  from unet_jax import steps  # pylint: disable=import-outside-toplevel
  normalize = steps.normalize_images
  monkeypatch.setattr(steps, "normalize_images", lambda images: normalize(images)[:, :, ::-1])
  broken = device_checks.check_parity_train_steps(shape)
  assert not broken["passed"] and broken["jax_fp32_vs_float64"][0] > 1e-2


def test_the_e2e_reference_flags_a_gpu_score_outside_the_seeds_spread():
  from benchmarks.gpu import e2e_reference  # pylint: disable=import-outside-toplevel
  cpu_runs = [{"final_scores": {"dice": d, "iou": d - 0.1}} for d in (0.80, 0.82, 0.84)]
  near = e2e_reference.compare({"final_scores": {"dice": 0.83, "iou": 0.73}}, cpu_runs)
  far = e2e_reference.compare({"final_scores": {"dice": 0.90, "iou": 0.80}}, cpu_runs)
  assert set(near) == {"dice", "iou"} and near["dice"]["within_noise"]
  assert near["dice"]["paired_difference"] == pytest.approx(0.03)
  assert near["dice"]["stds_from_mean"] == pytest.approx(0.5)  # (0.83 - 0.82) / 0.02.
  assert not far["dice"]["within_noise"] and far["iou"]["stds_from_mean"] == pytest.approx(4.0)


def test_the_e2e_reference_refuses_a_gpu_run_of_another_config():
  from benchmarks.gpu import e2e_reference  # pylint: disable=import-outside-toplevel
  config = e2e_reference.seed_config("synthetic", 0, 4, "float32", True, None)
  gpu_run = {"batch_size": config.batch_size, "image_size": list(config.image_size),
             "model": {"features": config.model.features, "depth": config.model.depth,
                       "squeeze_excitation": config.model.squeeze_excitation}}
  e2e_reference.check_same_run(config, gpu_run)
  with pytest.raises(ValueError, match="the GPU run trained"):
    e2e_reference.check_same_run(config, {**gpu_run, "batch_size": config.batch_size * 2})
  with pytest.raises(ValueError, match="squeeze_excitation"):  # configs/tgs.py before SE.
    e2e_reference.check_same_run(config, {**gpu_run, "model": {
        **gpu_run["model"], "squeeze_excitation": not config.model.squeeze_excitation}})


def test_the_gpu_report_puts_e2e_scores_beside_a_committed_cpu_reference(tmp_path):
  run = {"steps": 300, "batch_size": 32, "image_size": [128, 128],
         "model": {"features": 16, "depth": 4}, "final_scores": {"dice": 0.95, "iou": 0.83}}
  cpu_runs = [{"final_scores": {"dice": d, "iou": d - 0.1}} for d in (0.80, 0.82, 0.84)]
  path = tmp_path / "cpu-test-2c" / "e2e_reference.json"
  path.parent.mkdir()
  path.write_text(json.dumps({"device": {"name": "Test CPU"}, "dtype": "float32",
                              "seeds": [0, 1, 2],
                              "datasets": {"tgs": {"gpu_run": run, "cpu_runs": cpu_runs}}}))
  compare = gpu_check_report._cpu_reference_lines  # pylint: disable=protected-access
  lines = compare({"e2e": {"tgs": run}}, [path])
  assert len(lines) == 2 and "tgs against the CPU (Test CPU, float32" in lines[1]
  assert "dice 0.9500 against 0.8200 +- 0.0200" in lines[1] and "outside" in lines[1]
  assert "(../cpu-test-2c/e2e_reference.md)" in lines[1]
  other = {**run, "steps": 8}  # A dry run's: another config, not compared.
  assert not compare({"e2e": {"tgs": other}}, [path])
