"""evaluate: the metrics table, JSON, grid and threshold search of a trained run."""

import json
import subprocess
import sys

import pytest

from tests._trained_run import trained_workdir
from unet_jax import evaluate, inference
from unet_jax.errors import WorkdirError


def test_evaluate_writes_table_json_and_plots(tmp_path):
  report = evaluate.evaluate_run(trained_workdir(), "val", search=True, overlay=True,
                                 output_dir=tmp_path)
  scores = report["scores"]
  assert {"dice", "iou", "pixel_accuracy", "loss", "tgs_map"} <= set(scores)
  assert report["examples"] == 16 and report["step"] == 2
  saved = json.loads((tmp_path / "val_metrics.json").read_text())
  assert saved["scores"] == pytest.approx(scores)
  rows = saved["threshold_search"]["rows"]
  assert [row["threshold"] for row in rows] == list(evaluate.SWEEP_THRESHOLDS)
  at_half = next(row for row in rows if row["threshold"] == 0.5)
  for name in ("dice", "iou", "pixel_accuracy", "tgs_map"):  # Same split, same threshold.
    assert at_half[name] == pytest.approx(scores[name], abs=1e-6)
  best = saved["threshold_search"]["best"]
  assert best["dice"] == max(row["dice"] for row in rows)
  table = (tmp_path / "val_metrics.md").read_text()
  assert "| dice |" in table and "Threshold search" in table
  for name in ("val_predictions.png", "val_thresholds.png"):
    assert (tmp_path / name).stat().st_size > 1000


def test_workdir_errors_name_the_problem(tmp_path):
  with pytest.raises(WorkdirError, match="does not exist"):
    inference.load(tmp_path / "missing")
  with pytest.raises(WorkdirError, match="not a training workdir"):
    inference.load(tmp_path)
  (tmp_path / "config.json").write_text((trained_workdir() / "config.json").read_text())
  with pytest.raises(WorkdirError, match="has no checkpoints"):
    inference.load(tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # Looking did not create one.


def test_cli_reports_missing_checkpoints_in_one_line(tmp_path):
  (tmp_path / "config.json").write_text((trained_workdir() / "config.json").read_text())
  result = subprocess.run([sys.executable, "-m", "unet_jax.evaluate", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: workdir")
  assert "has no checkpoints" in result.stderr and "Traceback" not in result.stderr
