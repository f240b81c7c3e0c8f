"""benchmarks/quality/holdout_compare.py: the fold ensemble against single models, one holdout."""

import json

import pytest

from benchmarks.quality import holdout_compare

POST = {"metric": "tgs_map", "threshold": 0.45, "min_area": 80}


def _scores(value):
  return {"tgs_map": value, "postprocessed": value + 0.01, "iou": value, "dice": value}


def _ensemble(tmp_path, fold_values, ensemble_value):
  workdir = tmp_path / "cv"
  folds = {str(k): _scores(v) for k, v in enumerate(fold_values)}
  mean = {m: sum(f[m] for f in folds.values()) / len(folds) for m in _scores(0)}
  ensemble = _scores(ensemble_value)
  for k in folds:
    (workdir / f"fold{k}").mkdir(parents=True)
    (workdir / f"fold{k}" / "config.json").write_text(json.dumps({"num_train_steps": 600}))
  (workdir / "holdout_scores_tta.json").write_text(json.dumps({
      "examples": 200, "folds": folds, "mean": mean, "std": {m: 0.01 for m in mean},
      "ensemble": ensemble, "ensemble_gain": {m: ensemble[m] - mean[m] for m in mean},
      "postprocess": POST}))
  return workdir


def _single(tmp_path, name, plain, post, examples=200):
  run_dir = tmp_path / name
  (run_dir / "eval").mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps({"num_train_steps": 600}))
  rows = [{"threshold": 0.5, "min_area": 0, "tgs_map": plain},
          {"threshold": 0.45, "min_area": 80, "tgs_map": post},
          {"threshold": 0.5, "min_area": 80, "tgs_map": 0.0}]
  (run_dir / "eval" / "val_tta_metrics.json").write_text(json.dumps({
      "step": 600, "examples": examples, "scores": {"tgs_map": plain, "iou": 0.7, "dice": 0.8},
      "threshold_search": {"rows": rows}}))
  return run_dir


def test_rows_share_the_holdout_and_the_folds_post_processing(tmp_path, capsys):
  workdir = _ensemble(tmp_path, [0.60, 0.62, 0.64], 0.66)
  single = _single(tmp_path, "single", plain=0.63, post=0.65)
  out = tmp_path / "report" / "holdout"
  holdout_compare.main(["--ensemble", str(workdir), "--single", f"one={single}",
                        "--out", str(out)])
  table = out.with_suffix(".md").read_text()
  assert table == capsys.readouterr().out
  rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
  # The single model is read at the folds' (0.45, 80 px), not at its own best row.
  assert rows["| one"].startswith("| one | 600 | - | 0.6300 | 0.6500 | 0.7000 | 0.8000 |")
  assert "| 3 x 600 |" in rows["| **ensemble of 3 folds**"]
  assert "Ensemble gain over the mean fold: tgs_map +0.0400" in table
  assert "Ensemble minus one: tgs_map +0.0300, postprocessed +0.0200" in table
  assert json.loads(out.with_suffix(".json").read_text())["singles"]["one"]["steps"] == 600
  assert out.with_suffix(".png").stat().st_size > 1000


def test_a_single_model_scored_on_other_images_is_refused(tmp_path):
  workdir = _ensemble(tmp_path, [0.6, 0.6], 0.6)
  single = _single(tmp_path, "single", 0.6, 0.6, examples=150)
  with pytest.raises(SystemExit, match="scored on 150 images.*has 200"):
    holdout_compare.main(["--ensemble", str(workdir), "--single", f"one={single}",
                          "--out", str(tmp_path / "out")])


def test_missing_inputs_say_what_to_run(tmp_path):
  with pytest.raises(SystemExit, match="fold_holdout=True"):
    holdout_compare.load_ensemble(tmp_path)
  with pytest.raises(SystemExit, match="unet_jax.evaluate --workdir"):
    holdout_compare.load_single(f"one={tmp_path}", POST)
