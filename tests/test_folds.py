"""K-fold cross-validation splits: deterministic, disjoint, grouped and stratified."""

import collections
import json
import signal

import numpy as np
import pytest

from configs import carvana as carvana_config
from configs import default
from configs import tgs as tgs_config
from tests import _data_samples
from tests.conftest import shared_data_dir
from unet_jax import cross_validate, data, evaluate, resilience
from unet_jax.data import folds, prepare
from unet_jax.errors import ConfigError, WorkdirError


def test_deal_folds_balances_each_stratum_and_is_deterministic():
  groups = {f"id{i}": i % 3 for i in range(31)}  # Three strata of 11, 10, 10.
  fold_of = folds.deal_folds(groups, 4)
  assert fold_of == folds.deal_folds(dict(reversed(list(groups.items()))), 4)
  sizes = collections.Counter(fold_of.values())
  assert max(sizes.values()) - min(sizes.values()) <= 1
  for stratum in range(3):
    per_fold = collections.Counter(f for g, f in fold_of.items() if groups[g] == stratum)
    assert max(per_fold.values()) - min(per_fold.values()) <= 1


def test_group_keys_keep_cars_and_sequences_together():
  assert folds.group_key("carvana", "00087a6bd4dc_01") == "00087a6bd4dc"
  assert folds.group_key("camvid", "0001TP_006690") == "0001TP"
  assert folds.group_key("tgs", "000e218f21") == "000e218f21"
  assert folds.coverage_stratum(np.zeros((4, 4))) == 0
  assert folds.coverage_stratum(np.eye(4)) == 3  # 25% salt -> ceil(2.5).


@pytest.mark.parametrize("overrides, message", [
    ({"num_folds": 1}, "num_folds=1"),
    ({"num_folds": 3, "fold": 3}, "fold=3 is not in 0..2"),
    ({"num_folds": 3, "dataset": "synthetic"}, "synthetic"),
    ({"fold_holdout": True}, "fold_holdout=True .* num_folds=0"),
])
def test_bad_fold_settings_are_config_errors(overrides, message):
  config = tgs_config.get_config()
  config.update(overrides)
  with pytest.raises(ConfigError, match=message):
    folds.check(config)


@pytest.fixture(scope="module")
def tgs_prepared(tmp_path_factory):
  zip_dir, _ = _data_samples.tgs_layouts(shared_data_dir("tgs"),
                                         tmp_path_factory.mktemp("tgs"), count=40)
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare("tgs", zip_dir, data_dir)
  return data_dir


def _ids(source):
  return [source.data_source[i]["id"].decode() for i in range(len(source))]


def _plain(data_dir, **overrides):
  """configs/tgs.py on the prepared sample, records kept on disk (their ids stay readable)."""
  config = tgs_config.get_config()
  config.data_dir, config.cache_decoded_mb = str(data_dir), 0
  config.update(overrides)
  return config


def test_tgs_folds_partition_the_pooled_ids_stratified_by_coverage(tgs_prepared):
  plain = _plain(tgs_prepared)
  everything = set(_ids(data.load_split(plain, "train"))) | set(_ids(data.load_split(plain, "val")))
  held_out, empty_counts = [], []
  for fold in range(3):
    config = _plain(tgs_prepared, num_folds=3, fold=fold)
    train, val = data.load_split(config, "train"), data.load_split(config, "val")
    train_ids, val_ids = set(_ids(train)), _ids(val)
    assert not train_ids & set(val_ids) and train_ids | set(val_ids) == everything
    held_out.append(val_ids)
    empty_counts.append(sum(folds.coverage_stratum(val[i]["mask"]) == 0 for i in range(len(val))))
  assert sorted(i for val_ids in held_out for i in val_ids) == sorted(everything)
  assert max(map(len, held_out)) - min(map(len, held_out)) <= 1
  # Empty masks are one stratum, dealt evenly over the folds.
  assert max(empty_counts) - min(empty_counts) <= 1 and sum(empty_counts) > 0


def test_fold_holdout_keeps_the_prepared_val_split_out_of_every_fold(tgs_prepared):
  plain = _plain(tgs_prepared)
  prepared_train, prepared_val = (set(_ids(data.load_split(plain, s))) for s in ("train", "val"))
  for fold in range(3):
    config = _plain(tgs_prepared, num_folds=3, fold=fold, fold_holdout=True)
    train, val = set(_ids(data.load_split(config, "train"))), set(_ids(data.load_split(config,
                                                                                       "val")))
    assert not train & val and train | val == prepared_train
    assert set(_ids(data.load_split(config, "holdout"))) == prepared_val
  with pytest.raises(ConfigError, match="fold_holdout=True"):
    data.load_split(_plain(tgs_prepared, num_folds=3), "holdout")
  with pytest.raises(ConfigError, match="unknown split 'test'"):
    data.load_split(plain, "test")


def test_carvana_folds_never_split_a_car(tmp_path):
  zip_dir, _ = _data_samples.carvana_layouts(shared_data_dir("carvana"), tmp_path / "dl")
  prepare.prepare("carvana", zip_dir, tmp_path / "tfds", resolution="64x96")
  config = carvana_config.get_config()
  config.data_dir, config.image_size, config.cache_decoded_mb = str(tmp_path / "tfds"), (64, 96), 0
  config.num_folds = 3
  cars_per_fold = []
  for fold in range(3):
    config.fold = fold
    val_cars = {folds.group_key("carvana", i) for i in _ids(data.load_split(config, "val"))}
    train_cars = {folds.group_key("carvana", i) for i in _ids(data.load_split(config, "train"))}
    assert len(val_cars) == 1 and not val_cars & train_cars  # 3 cars, 3 folds.
    cars_per_fold.append(val_cars)
  assert len(set.union(*cars_per_fold)) == 3


def test_cross_validate_trains_each_fold_and_tabulates_mean_and_std(tgs_prepared, tmp_path):
  config = _plain(tgs_prepared, num_train_steps=2, eval_every_steps=2, log_every_steps=1,
                  batch_size=8, eval_batch_size=8)
  config.model.update(features=4, depth=2)
  summary = cross_validate.cross_validate(config, tmp_path, num_folds=2, tta="flip")
  assert sorted(summary["folds"]) == [0, 1] and summary["steps"] == {0: 2, 1: 2}
  for fold in (0, 1):
    saved = json.loads((tmp_path / f"fold{fold}" / "config.json").read_text())
    assert (saved["num_folds"], saved["fold"]) == (2, fold)
  tgs = [summary["folds"][k]["tgs_map"] for k in (0, 1)]
  assert summary["mean"]["tgs_map"] == pytest.approx(np.mean(tgs))
  assert summary["std"]["tgs_map"] == pytest.approx(np.std(tgs, ddof=1))
  table = (tmp_path / "cv_scores_tta.md").read_text()
  assert "mean +- std" in table and "flip TTA" in table
  # A rerun trains nothing again: the finished folds' checkpoints are left as they were.
  before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "fold0" / "checkpoints").rglob("*"))
  again = cross_validate.cross_validate(config, tmp_path, num_folds=2, folds="1", search=True,
                                       min_areas=(0, 50), threshold_metric="tgs_map")
  fold_reports = [json.loads((tmp_path / f"fold{k}" / "eval" / "val_metrics.json").read_text())
                  for k in (0, 1)]
  assert again["folds"][0]["dice"] == pytest.approx(fold_reports[0]["scores"]["dice"])
  # The post-processing pair is the best mean over the folds' own searches.
  post = again["postprocess"]
  assert len(post["rows"]) == 2 * 19 and post["metric"] == "tgs_map"
  best = post["best"]
  per_fold = [next(r for r in report["threshold_search"]["rows"]
                   if (r["threshold"], r["min_area"]) == (best["threshold"], best["min_area"]))
              for report in fold_reports]
  assert best["tgs_map"] == pytest.approx(np.mean([r["tgs_map"] for r in per_fold]))
  assert best["tgs_map"] == max(row["tgs_map"] for row in post["rows"])
  assert "minimum area" in (tmp_path / "cv_postprocess.md").read_text()
  assert before == sorted(p.stat().st_mtime_ns
                          for p in (tmp_path / "fold0" / "checkpoints").rglob("*"))
  # Other weights than the best are scored into their own files, beside the best's.
  latest = cross_validate.cross_validate(config, tmp_path, num_folds=2, checkpoint="latest")
  assert latest["checkpoint"] == "latest" and sorted(latest["folds"]) == [0, 1]
  assert "latest checkpoints" in (tmp_path / "cv_scores_latest.md").read_text()
  assert (tmp_path / "fold0" / "eval" / "val_latest_metrics.json").exists()
  assert (tmp_path / "cv_scores_tta.md").read_text() == table
  with pytest.raises(WorkdirError, match="average:N"):  # Refused before any training.
    cross_validate.cross_validate(config, tmp_path / "new", num_folds=2, checkpoint="average:x")
  assert not (tmp_path / "new").exists()


def test_cross_validate_scores_each_fold_and_their_ensemble_on_the_holdout(tgs_prepared,
                                                                          tmp_path):
  config = _plain(tgs_prepared, num_train_steps=2, eval_every_steps=2, log_every_steps=1,
                  batch_size=8, eval_batch_size=8, fold_holdout=True)
  config.model.update(features=4, depth=2)
  summary = cross_validate.cross_validate(config, tmp_path, num_folds=2, tta="flip", search=True,
                                          min_areas=(0, 50), threshold_metric="tgs_map")
  holdout, chosen = summary["holdout"], summary["postprocess"]["best"]
  assert holdout["examples"] == len(data.load_split(_plain(tgs_prepared), "val"))
  runs = [tmp_path / f"fold{k}" for k in (0, 1)]
  for k, run in enumerate(runs):  # Each fold as evaluate scores it on the holdout.
    report = evaluate.evaluate_run(run, "holdout", tta="flip")
    assert holdout["folds"][k]["dice"] == pytest.approx(report["scores"]["dice"])
  ensemble = evaluate.evaluate_run(runs, "holdout", True, tta="flip",
                                   min_areas=(chosen["min_area"],))
  assert holdout["ensemble"]["tgs_map"] == pytest.approx(ensemble["scores"]["tgs_map"])
  # Post-processed with the folds' own choice, never one tuned on the holdout.
  row = next(r for r in ensemble["threshold_search"]["rows"]
             if r["threshold"] == chosen["threshold"])
  assert holdout["ensemble"]["postprocessed"] == pytest.approx(row["tgs_map"])
  mean = np.mean([holdout["folds"][k]["iou"] for k in (0, 1)])
  assert holdout["ensemble_gain"]["iou"] == pytest.approx(holdout["ensemble"]["iou"] - mean)
  table = (tmp_path / "holdout_scores_tta.md").read_text()
  assert "ensemble of 2 folds" in table and "images no fold trained on" in table


@pytest.mark.parametrize("folds_flag, message", [("0,5", "outside 0..2"), ("a", "comma-separated")])
def test_bad_folds_flag(folds_flag, message):
  with pytest.raises(ConfigError, match=message):
    cross_validate.parse_folds(folds_flag, 3)


def test_a_folder_datasets_group_regex_keeps_its_groups_in_one_fold():
  assert folds.group_key("folder", "car7_03", r"^(.+)_\d\d$") == "car7"
  assert folds.group_key("folder", "car7_03", r"^(?P<group>car\d)") == "car7"
  assert folds.group_key("folder", "car7_03") == "car7_03"


def test_a_stop_request_in_one_fold_stops_the_cross_validation(tmp_path, monkeypatch):
  trained = []

  def stopped_by_sigterm(config, workdir):  # A fold that got SIGTERM half way.
    trained.append(config.fold)
    with resilience.StopRequests() as stop:
      stop._request(signal.SIGTERM, None)  # pylint: disable=protected-access

  config = default.get_config()
  monkeypatch.setattr(cross_validate.train, "train_and_evaluate", stopped_by_sigterm)
  result = cross_validate.cross_validate(config, tmp_path, num_folds=3)
  assert trained == [0] and result == {"num_folds": 3, "stopped_in_fold": 0}
  assert not list(tmp_path.glob("cv_scores*"))  # No table of unfinished folds.
  with resilience.StopRequests():
    pass  # A block that runs to its end clears the record.
  assert resilience.StopRequests.last_signal_name is None
