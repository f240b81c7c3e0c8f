"""benchmarks/quality/cv_compare.py: paired per-fold gains decide which lever is kept."""

import json

import pytest

from benchmarks.quality import cv_compare


def _candidate(tmp_path, name, tgs_scores):
  workdir = tmp_path / name
  folds = {str(k): {"tgs_map": s, "iou": s, "dice": s} for k, s in enumerate(tgs_scores)}
  summary = {"num_folds": len(tgs_scores), "folds": folds,
             "steps": {k: 240 for k in folds},
             "mean": {m: sum(tgs_scores) / len(tgs_scores) for m in cv_compare.METRICS},
             "std": {m: 0.01 for m in cv_compare.METRICS}}
  for k in folds:
    (workdir / f"fold{k}").mkdir(parents=True)
    (workdir / f"fold{k}" / "config.json").write_text('{"num_train_steps": 300}')
    (workdir / f"fold{k}" / "metrics.jsonl").write_text("{}\n")
  (workdir / "cv_scores_tta.json").write_text(json.dumps(summary))
  return {**cv_compare.load_candidate(workdir), "overrides": ""}


def test_a_lever_is_kept_only_when_its_paired_gain_beats_its_spread(tmp_path):
  base = _candidate(tmp_path, "base", [0.70, 0.60, 0.80])
  steady = _candidate(tmp_path, "steady", [0.72, 0.63, 0.825])
  noisy = _candidate(tmp_path, "noisy", [0.75, 0.56, 0.82])
  gain = cv_compare.paired_gain(steady, base)
  assert gain["mean"] == pytest.approx(0.025) and gain["kept"]
  assert not cv_compare.paired_gain(noisy, base)["kept"]  # +0.01 mean, but +-0.045.
  steady["summary"]["mean"].update(tgs_map_empty=0.912, tgs_map_salt=0.431)
  table = cv_compare.markdown({"base": base, "steady": steady, "noisy": noisy}, "base")
  assert "(baseline)" in table and "+0.0250" in table and "not kept" in table
  rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
  assert "| 0.912 / 0.431 |" in rows["| steady"] and "| - |" in rows["| base"]
  assert all(line.count("|") == 11 for line in rows.values())  # Header and rows align.
  # The schedule (config.num_train_steps), not the step of fold 0's best checkpoint (240).
  assert "| 300 |" in rows["| steady"] and "| 240 |" not in rows["| steady"]
  cv_compare.plot({"base": base, "steady": steady}, tmp_path / "cv.png")
  assert (tmp_path / "cv.png").stat().st_size > 1000


def test_a_workdir_without_scores_says_what_to_run(tmp_path):
  with pytest.raises(SystemExit, match="run python -m unet_jax.cross_validate"):
    cv_compare.load_candidate(tmp_path)


def test_post_processing_gain_is_paired_per_fold(tmp_path):
  for fold, (plain, post) in enumerate([(0.60, 0.62), (0.70, 0.71), (0.65, 0.665)]):
    rows = [{"threshold": 0.5, "min_area": 0, "tgs_map": plain},
            {"threshold": 0.5, "min_area": 80, "tgs_map": post}]
    (tmp_path / f"fold{fold}" / "eval").mkdir(parents=True)
    (tmp_path / f"fold{fold}" / "eval" / "val_tta_metrics.json").write_text(
        json.dumps({"threshold_search": {"rows": rows}}))
  gain = cv_compare.postprocess_gain(tmp_path, 0.5, 80)
  assert gain["gains"] == pytest.approx([0.02, 0.01, 0.015]) and gain["kept"]
  assert cv_compare.postprocess_gain(tmp_path / "missing", 0.5, 80) is None


def test_a_label_reads_the_scores_of_other_weights(tmp_path):
  base = _candidate(tmp_path, "base", [0.70, 0.60, 0.80])
  averaged = json.loads((tmp_path / "base" / "cv_scores_tta.json").read_text())
  averaged["mean"]["tgs_map"] = 0.75
  (tmp_path / "base" / "cv_scores_tta_average3.json").write_text(json.dumps(averaged))
  loaded = cv_compare.load_candidate(tmp_path / "base", "average3")
  assert loaded["summary"]["mean"]["tgs_map"] == 0.75
  assert base["summary"]["mean"]["tgs_map"] == pytest.approx(0.7)
  with pytest.raises(SystemExit, match="no cv_scores_latest.json"):
    cv_compare.load_candidate(tmp_path / "base", "latest")


def _searched_folds(workdir, per_fold_rows):
  for fold, rows in enumerate(per_fold_rows):
    (workdir / f"fold{fold}" / "eval").mkdir(parents=True, exist_ok=True)
    (workdir / f"fold{fold}" / "eval" / "val_tta_metrics.json").write_text(json.dumps(
        {"threshold_search": {"rows": [{"threshold": t, "min_area": a, "tgs_map": s}
                                        for (t, a), s in rows.items()]}}))


def test_gain_at_the_shipped_post_processing_pairs_folds_scored_alike(tmp_path):
  # The candidate wins by 0.04 at 0.5 / 0 px, but post-processing closes most of the gap.
  base = _candidate(tmp_path, "base", [0.64, 0.67, 0.63])
  lovasz = _candidate(tmp_path, "lovasz", [0.68, 0.71, 0.67])
  _searched_folds(tmp_path / "base", [{(0.5, 0): s, (0.5, 80): s + 0.02} for s in
                                      (0.64, 0.67, 0.63)])
  _searched_folds(tmp_path / "lovasz", [{(0.5, 0): s, (0.5, 80): s + 0.001} for s in
                                        (0.68, 0.71, 0.67)])
  for name, run in (("base", base), ("lovasz", lovasz)):
    run["scores_at"] = cv_compare.fold_scores_at(tmp_path / name, 0.5, 80)
  gain = cv_compare.gain_at(lovasz, base)
  assert gain["gains"] == pytest.approx([0.021] * 3) and gain["kept"]
  table = cv_compare.markdown({"base": base, "lovasz": lovasz}, "base", at=(0.5, 80))
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert "paired gain at t 0.50, 80 px" in rows[0] and "+0.0210 +- 0.0000 kept" in rows[-1]
  assert all(line.count("|") == 12 for line in rows)
  with pytest.raises(SystemExit, match="was not searched"):
    cv_compare.fold_scores_at(tmp_path / "base", 0.65, 160)


def test_a_committed_report_stands_in_for_a_baseline_workdir(tmp_path):
  base = _candidate(tmp_path, "base", [0.70, 0.60, 0.80])
  base["scores_at"] = [0.71, 0.62, 0.80]
  report = tmp_path / "tgs_cv.json"
  report.write_text(json.dumps({"base": {k: v for k, v in base.items() if k != "config"}}))
  report.with_suffix(".md").write_text("| candidate | paired gain at t 0.50, 80 px (TGS) |\n")
  reported = cv_compare.load_reported(report, "base", at=(0.5, 80))
  assert reported["scores_at"] == [0.71, 0.62, 0.80]  # `at` read from the legacy .md header.
  assert cv_compare.load_reported(report, "base", at=(0.55, 160))["scores_at"] is None
  steady = _candidate(tmp_path, "steady", [0.72, 0.63, 0.825])
  assert cv_compare.paired_gain(steady, reported)["mean"] == pytest.approx(0.025)
  with pytest.raises(SystemExit, match=r"no candidate 'reg'; it holds \['base'\]"):
    cv_compare.load_reported(report, "reg", at=None)
  with pytest.raises(SystemExit, match="no such report"):
    cv_compare.load_reported(tmp_path / "missing.json", "base", at=None)
