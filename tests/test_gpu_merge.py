"""benchmarks/gpu/merge_runs.py: a full GPU run and its `--only` reruns become one report."""

import json

import pytest

from tests.conftest import REPO

merge_runs = pytest.importorskip("benchmarks.gpu.merge_runs")

H200 = REPO / "benchmarks" / "results" / "gpu-h200"


def _result(variant, rate=None, error=None):
  framework = variant.split("_")[0]
  if rate is None:
    return {"variant": variant, "framework": framework, "status": "failed", "error": error}
  return {"variant": variant, "framework": framework, "status": "ok",
          "img_per_s": {"median": rate}, "step_ms_median": 1.0}


def _report(started, *results):
  return {"environment": {"started_utc": started}, "note": "gpu_check", "results": list(results)}


def test_a_preset_keeps_each_variant_s_last_success_and_says_which_run_timed_it():
  first = _report("2026-12-04T14:52:00+00:00", _result("jax_bf16", 100.0),
                  _result("torch_eager", error="no first step within 69 s"),
                  _result("torch_compile", 90.0))
  second = _report("2026-12-04T14:59:00+00:00", _result("torch_eager", 80.0),
                   _result("jax_bf16", 104.0), _result("torch_compile", error="not built"))
  merged = merge_runs.merge_preset([first, second])
  by_variant = {r["variant"]: r for r in merged["results"]}
  assert by_variant["jax_bf16"]["img_per_s"]["median"] == 104.0  # The later run's.
  assert by_variant["torch_eager"]["status"] == "ok"  # A rerun's success replaces a failure,
  assert by_variant["torch_compile"]["img_per_s"]["median"] == 90.0  # a failure nothing.
  assert by_variant["torch_compile"]["run"] == "2026-12-04T14:52:00+00:00"
  assert merged["summary"]["best_torch"] == "torch_compile"
  assert merged["summary"]["ratio_jax_to_best_torch"] == pytest.approx(104 / 90)
  assert merged["merged_from"]["cross_run_spread"] == {"jax_bf16": pytest.approx(0.04)}
  assert "merged from 2 runs" in merged["note"] and "jax_bf16 4.0%" in merged["note"]


def test_one_run_is_left_as_it_was():
  only = _report("2026-12-04T14:52:00+00:00", _result("jax_bf16", 100.0),
                 _result("torch_eager", 50.0))
  merged = merge_runs.merge_preset([only])
  assert merged["note"] == "gpu_check" and merged["summary"]["ratio_jax_to_best_torch"] == 2.0


def test_a_stage_skipped_in_a_rerun_keeps_the_full_run_s_record():
  def run(started, stages, checks):
    return {"environment": {"started_utc": started, "wall_s": 1.0, "command": started},
            "stages": stages, "checks": checks, "e2e": {}, "profile": {}, "throughput": {}}
  full = run("a", {"checks": {"status": "ok"}, "e2e:tgs": {"status": "failed", "error": "late"}},
             {"parity": {"passed": True}})
  rerun = run("b", {"checks": {"status": "skipped"}, "e2e:tgs": {"status": "ok"}}, {})
  merged = merge_runs.merge_checks([full, rerun], presets={})
  assert merged["stages"] == {"checks": {"status": "ok"}, "e2e:tgs": {"status": "ok"}}
  assert merged["checks"] == {"parity": {"passed": True}}
  assert [r["command"] for r in merged["environment"]["runs"]] == ["a", "b"]
  assert merged["summary"]["all_passed"]


def test_the_committed_h200_reports_are_the_merge_of_the_committed_runs(tmp_path):
  if not (H200 / "gpu_check.json").exists():
    pytest.skip("no committed GPU report")
  runs = sorted((H200 / "raw").glob("run*.tar.gz"))
  assert runs, "the committed GPU report has no raw runs beside it (raw/run*.tar.gz)"
  merge_runs.merge(runs, tmp_path)
  for name in ("classic.json", "tgs.json", "carvana.json"):
    fresh, committed = (json.loads((d / name).read_text()) for d in (tmp_path, H200))
    assert fresh["summary"] == committed["summary"] and fresh["results"] == committed["results"]
  fresh = json.loads((tmp_path / "gpu_check.json").read_text())
  committed = json.loads((H200 / "gpu_check.json").read_text())
  assert fresh["throughput"] == committed["throughput"] and fresh["stages"] == committed["stages"]


def test_a_missing_run_is_refused_with_the_fix(tmp_path, capsys):
  with pytest.raises(SystemExit):
    merge_runs.main([str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path)])
  assert "pass the results.tar.gz of each call" in capsys.readouterr().err
