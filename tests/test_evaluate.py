"""evaluate: the metrics table, JSON, grid and threshold search of a trained run."""

import json
import subprocess
import sys

import pytest

from tests._trained_run import trained_workdir
from tests.conftest import tiny_config
from unet_jax import data, evaluate, inference
from unet_jax.errors import ConfigError, WorkdirError


def test_evaluate_writes_table_json_and_plots(tmp_path):
  report = evaluate.evaluate_run(trained_workdir(), "val", search=True, overlay=True,
                                 output_dir=tmp_path, crop="12x10")
  assert report["scored_window"] == (12, 10)
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
  assert "| dice |" in table and "Threshold search" in table and "centred 12x10" in table
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


def test_centre_window_scores_only_the_original_pixels(tmp_path):
  source = data.load_split(tiny_config(), "val")
  windowed = evaluate.CentreWindow(source, (12, 10))
  weight = windowed[3]["weight"]
  assert weight.shape == (16, 16) and weight.sum() == 120
  assert weight[2:14, 3:13].all() and weight[:2].sum() == weight[:, :3].sum() == 0
  assert evaluate.native_window(source, tiny_config()) is None  # Synthetic: nothing padded.
  with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
    evaluate.evaluate_run(trained_workdir(), crop="101", output_dir=tmp_path)
  whole = evaluate.evaluate_run(trained_workdir(), crop="none", output_dir=tmp_path)
  centre = evaluate.evaluate_run(trained_workdir(), crop="4x4", output_dir=tmp_path)
  assert whole["scored_window"] is None
  assert whole["scores"]["pixel_accuracy"] != centre["scores"]["pixel_accuracy"]
