"""evaluate: the metrics table, JSON, grid and threshold search of a trained run."""

import atexit
import functools
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests._trained_run import FLOAT32, trained_workdir
from tests.conftest import tiny_config
from unet_jax import data, evaluate, inference, steps, train
from unet_jax.errors import ConfigError, WorkdirError


def test_evaluate_writes_table_json_and_plots(tmp_path):
  report = evaluate.evaluate_run(trained_workdir(), "val", search=True, overlay=True,
                                 output_dir=tmp_path, crop="12x10", min_areas=(0, 121))
  assert report["scored_window"] == (12, 10)
  scores = report["scores"]
  assert {"dice", "iou", "pixel_accuracy", "loss", "tgs_map"} <= set(scores)
  assert report["examples"] == 16 and report["step"] == 2
  saved = json.loads((tmp_path / "val_metrics.json").read_text())
  assert saved["scores"] == pytest.approx(scores)
  every_row = saved["threshold_search"]["rows"]
  # 121 pixels is more than the 12x10 window: every prediction is emptied.
  for row in evaluate.rows_at_min_area(every_row, 121):
    assert row["dice"] == 0 and row["iou"] == 0
  rows = evaluate.rows_at_min_area(every_row, 0)
  assert [row["threshold"] for row in rows] == list(evaluate.SWEEP_THRESHOLDS)
  at_half = next(row for row in rows if row["threshold"] == 0.5)
  for name in ("dice", "iou", "pixel_accuracy", "tgs_map"):  # Same split, same threshold.
    assert at_half[name] == pytest.approx(scores[name], abs=1e-6)
  best = saved["threshold_search"]["best"]
  assert best["dice"] == max(row["dice"] for row in every_row)
  table = (tmp_path / "val_metrics.md").read_text()
  assert "| dice |" in table and "Threshold search" in table and "centred 12x10" in table
  assert "| 121 |" in table  # The best score at each minimum area.
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


@functools.cache
def _second_run():
  """Another tiny run of the same task (another seed): a second ensemble member."""
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="unet_jax_trained_seed1_"))
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2,
                                       log_every_steps=1, seed=1, **FLOAT32), workdir)
  return workdir


def test_ensemble_averages_the_members_probabilities(tmp_path):
  members = [trained_workdir(), _second_run()]
  ensemble = inference.load_ensemble(members)
  assert [step for _, step, _ in ensemble.members] == [2, 2]
  images = np.stack([data.load_split(tiny_config(), "val")[i]["image"] for i in range(4)])
  each = [inference.probabilities(inference.load(w).state, images) for w in members]
  averaged = inference.make_predict_fn("none")(ensemble.state, images)
  np.testing.assert_allclose(averaged, (each[0] + each[1]) / 2, atol=1e-6)
  assert not np.allclose(each[0], each[1])  # Two different models, so the mean means something.
  report = evaluate.evaluate_run(members, output_dir=tmp_path)
  assert [m["step"] for m in report["members"]] == [2, 2]
  assert (tmp_path / "val_ensemble_metrics.json").exists()
  assert "ensemble of 2 runs" in (tmp_path / "val_ensemble_metrics.md").read_text()


def test_flip_tta_scores_the_averaged_mirror_and_keeps_the_plain_report(tmp_path):
  plain = evaluate.evaluate_run(trained_workdir(), output_dir=tmp_path)
  flipped = evaluate.evaluate_run(trained_workdir(), output_dir=tmp_path, tta="flip",
                                  search=True)
  assert json.loads((tmp_path / "val_metrics.json").read_text())["tta"] == "none"
  assert json.loads((tmp_path / "val_tta_metrics.json").read_text())["tta"] == "flip"
  assert flipped["scores"] != plain["scores"]
  # The sweep at 0.5 and the TTA eval step see the same averaged probabilities.
  at_half = next(r for r in flipped["threshold_search"]["rows"] if r["threshold"] == 0.5)
  assert at_half["dice"] == pytest.approx(flipped["scores"]["dice"], abs=1e-6)
  # Averaged logits: a single run without TTA keeps its own logits exactly.
  model = inference.load(trained_workdir())
  images = np.stack([data.load_split(tiny_config(), "val")[i]["image"] for i in range(2)])
  np.testing.assert_array_equal(inference.averaged_logits(model.state, images),
                                steps.model_logits(model.state, images))


def test_ensemble_of_different_tasks_is_refused(tmp_path):
  other = tmp_path / "other"
  train.train_and_evaluate(tiny_config(num_train_steps=1, eval_every_steps=1,
                                       image_size=(32, 32)), other)
  with pytest.raises(WorkdirError, match="ensemble only runs trained for the same task"):
    inference.load_ensemble([trained_workdir(), other])


def test_min_areas_need_the_search_and_parse_clearly():
  with pytest.raises(ConfigError, match="add --threshold_search"):
    evaluate.evaluate_run(trained_workdir(), min_areas=(0, 10))
  assert evaluate.parse_min_areas("20, 0,10") == (0, 10, 20)
  for bad in ("", "ten", "-5"):
    with pytest.raises(ConfigError, match="comma-separated list of pixel counts"):
      evaluate.parse_min_areas(bad)
