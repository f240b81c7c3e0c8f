"""Checkpoint averaging: --checkpoint average:N loads the mean weights of a run's last N."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from unet_jax import evaluate, inference, train
from unet_jax.errors import WorkdirError


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("averaged")
  train.train_and_evaluate(tiny_config(num_train_steps=3, eval_every_steps=1, log_every_steps=1,
                                       max_checkpoints=3), workdir)
  assert inference.saved_steps(workdir) == [1, 2, 3]
  return workdir


def _leaves(model):
  return [np.asarray(x) for x in jax.tree.leaves((model.state.params, model.state.batch_stats))]


def test_average_is_the_leafwise_mean_of_the_last_checkpoints(three_checkpoints):
  averaged = inference.load(three_checkpoints, "average:2")
  assert averaged.averaged_steps == (2, 3) and averaged.step == 3
  step2, step3 = inference.load(three_checkpoints, "2"), inference.load(three_checkpoints, "3")
  for mean, a, b in zip(_leaves(averaged), _leaves(step2), _leaves(step3)):
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6, atol=1e-7)
  assert any(not np.allclose(a, b) for a, b in zip(_leaves(step2), _leaves(step3)))
  one = inference.load(three_checkpoints, "average:1")
  assert all(np.array_equal(x, y) for x, y in zip(_leaves(one), _leaves(step3)))


def test_evaluate_scores_the_average_into_its_own_files(three_checkpoints, tmp_path):
  best = evaluate.evaluate_run(three_checkpoints, output_dir=tmp_path)
  report = evaluate.evaluate_run(three_checkpoints, output_dir=tmp_path, checkpoint="average:3")
  assert report["averaged_steps"] == [1, 2, 3] and report["checkpoint"] == "average:3"
  saved = json.loads((tmp_path / "val_average3_metrics.json").read_text())
  assert saved["scores"] == pytest.approx(report["scores"])
  assert json.loads((tmp_path / "val_metrics.json").read_text())["scores"] == pytest.approx(
      best["scores"])  # The best checkpoint's report is kept beside it.
  assert report["scores"]["loss"] != pytest.approx(best["scores"]["loss"], rel=1e-6)


def test_an_ensemble_of_averaged_runs_records_each_members_steps(three_checkpoints, tmp_path):
  report = evaluate.evaluate_run([three_checkpoints, three_checkpoints], output_dir=tmp_path,
                                 checkpoint="average:2")
  assert [m["averaged_steps"] for m in report["members"]] == [[2, 3], [2, 3]]
  assert report["averaged_steps"] == []  # Not one member's steps standing for all.


@pytest.mark.parametrize("which, message", [
    ("average:4", "keeps 3 checkpoints .*max_checkpoints=4"),
    ("average:x", "average:N needs a whole N >= 1"),
    ("average:0", "average:N needs a whole N >= 1"),
    ("7", r"checkpoint '7' not in .*\[1, 2, 3\]"),
])
def test_bad_checkpoint_choices_name_the_fix(three_checkpoints, which, message):
  with pytest.raises(WorkdirError, match=message):
    inference.load(three_checkpoints, which)


def test_checkpoint_choices_and_their_file_labels():
  labels = {w: inference.checkpoint_label(w) for w in ("best", "latest", "600", "average:3")}
  assert labels == {"best": "", "latest": "_latest", "600": "_step600", "average:3": "_average3"}
  for good in ("best", "latest", "600", "average:3"):
    inference.check_choice(good)
  with pytest.raises(WorkdirError, match="use best, latest, a step number, or average:N"):
    inference.check_choice("last")


def test_predict_cli_refuses_too_few_checkpoints_in_one_line(three_checkpoints, tmp_path):
  result = subprocess.run([sys.executable, "-m", "unet_jax.predict",
                           f"--workdir={three_checkpoints}", f"--input={tmp_path}",
                           f"--output={tmp_path / 'out'}", "--checkpoint=average:5"],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --checkpoint=average:5")
  assert not (tmp_path / "out").exists()
