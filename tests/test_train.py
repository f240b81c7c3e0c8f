"""End-to-end training on the synthetic set: files written, quality reached, resume."""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import synthetic as synthetic_config
from tests.conftest import REPO, XLA_TEST_FLAG, metrics_by_step, tiny_config
from unet_jax.errors import ConfigError
from unet_jax import plots, runtime, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_run")
  scores = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, scores


def test_workdir_holds_config_metrics_checkpoints_and_plots(tiny_run):
  workdir, scores = tiny_run
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["features"] == 4 and config["num_train_steps"] == 4
  records = plots.read_metrics(workdir / "metrics.jsonl")
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
  val = [r for r in records if r["split"] == "val"]
  assert [r["step"] for r in val] == [4]
  assert val[0]["dice"] == pytest.approx(scores["dice"])
  assert all(np.isfinite(r["loss"]) for r in records)
  assert (workdir / "checkpoints" / "4").is_dir()
  for name in ("loss.png", "predictions.png"):
    with Image.open(workdir / "plots" / name) as png:
      assert png.size[0] > 300 and png.size[1] > 200


def test_rerun_resumes_from_the_latest_checkpoint_and_continues(tiny_run, tmp_path):
  workdir, _ = tiny_run
  config = tiny_config(num_train_steps=6, eval_every_steps=2)
  train.train_and_evaluate(config, workdir)
  steps = [r["step"] for r in plots.read_metrics(workdir / "metrics.jsonl")
           if r["split"] == "val"]
  assert steps == [4, 6]  # Started at 5, not from scratch.


def test_multiclass_synthetic_trains_with_softmax(tmp_path):
  config = tiny_config(**{"synthetic.multiclass": True, "num_classes": 5, "loss": "softmax_ce"})
  scores = train.train_and_evaluate(config, tmp_path)
  assert 0.0 <= scores["miou"] <= 1.0 and np.isfinite(scores["loss"])


def test_demo_command_reaches_validation_dice_of_0_90(tmp_path):
  """The README's demo command as a user runs it: XLA's default flags, not the suite's -O0
  (0.5-2.5 minutes on 2 cores)."""
  flags = os.environ.get("XLA_FLAGS", "").replace(XLA_TEST_FLAG, "").strip()
  env = {**os.environ, "XLA_FLAGS": flags}
  done = subprocess.run([sys.executable, "-m", "unet_jax.main", "--config",
                         "configs/synthetic.py", "--workdir", str(tmp_path)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  validation = [r for r in plots.read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "val"]
  assert validation[-1]["step"] == synthetic_config.get_config().num_train_steps
  assert validation[-1]["dice"] >= 0.90


def test_boundary_weight_map_reaches_the_train_step(tmp_path):
  """With weight_map on, the batch carries per-pixel weights > 1 near shape borders."""
  config = tiny_config(weight_map=True, num_train_steps=2, eval_every_steps=2)
  transform = train._train_transform(config)  # pylint: disable=protected-access
  element = transform(train.data.load_split(config, "train")[0], np.random.default_rng(0))
  assert element["weight"].shape == (16, 16) and element["weight"].max() > 1.0
  scores = train.train_and_evaluate(config, tmp_path)
  assert np.isfinite(scores["loss"])


def test_cpu_dispatch_setting_after_the_client_exists_is_named_not_silent(caplog):
  jax.devices()  # The CPU client now exists; its dispatch mode is fixed.
  current = jax.config.read("jax_cpu_enable_async_dispatch")
  with caplog.at_level(logging.WARNING):
    runtime.configure_cpu_dispatch(current)
    assert not caplog.records
    runtime.configure_cpu_dispatch(not current)
  assert any("comes too late" in record.getMessage() for record in caplog.records)
  runtime.configure_cpu_dispatch(current)


def test_second_loss_stage_takes_over_at_its_step(tmp_path, caplog):
  one_stage = train.train_and_evaluate(tiny_config(num_train_steps=4, log_every_steps=1),
                                       tmp_path / "one")
  with caplog.at_level("INFO"):
    two_stage = train.train_and_evaluate(tiny_config(
        num_train_steps=4, log_every_steps=1, loss_stage2="lovasz_hinge", loss_stage2_step=3),
        tmp_path / "two")
  assert any("step 3: training with lovasz_hinge" in r.getMessage() for r in caplog.records)
  first, second = (metrics_by_step(tmp_path / name, "train") for name in ("one", "two"))
  for step in (1, 2):  # The same BCE steps until the switch...
    assert first[step]["loss"] == second[step]["loss"]
  for step in (3, 4):  # ...then the Lovasz hinge, another loss of other values.
    assert first[step]["loss"] != second[step]["loss"]
  assert two_stage != one_stage
  with pytest.raises(ConfigError, match="loss_stage2_step=9 is not in 1..4"):
    train.train_and_evaluate(tiny_config(loss_stage2="lovasz_hinge", loss_stage2_step=9),
                             tmp_path / "bad")
  with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
    train.train_and_evaluate(tiny_config(loss_stage2="hinge", loss_stage2_step=2),
                             tmp_path / "bad")


def test_tgs_config_moves_its_lovasz_stage_with_the_schedule():
  from configs import tgs  # pylint: disable=import-outside-toplevel
  config = tgs.get_config()
  assert config.loss_stage2 == "lovasz_hinge_elu"
  assert config.loss_stage2_step == config.num_train_steps * 2 // 3
  config.num_train_steps = 600  # What --config.num_train_steps=600 does.
  assert config.loss_stage2_step == 400
  config.loss_stage2_step = 500  # An explicit override still wins.
  config.num_train_steps = 900
  assert config.loss_stage2_step == 500


def test_grain_worker_processes_train_as_the_threads_do_and_resume(tiny_run, tmp_path):
  # README tells GPU hosts to decode in worker processes (--config.num_workers=16): the same
  # batches as the threads give, so the same scores, and a rerun resumes their stream.
  _, thread_scores = tiny_run
  scores = train.train_and_evaluate(tiny_config(num_workers=2), tmp_path)
  assert scores["dice"] == pytest.approx(thread_scores["dice"], rel=1e-6)
  assert scores["loss"] == pytest.approx(thread_scores["loss"], rel=1e-6)
  train.train_and_evaluate(tiny_config(num_workers=2, num_train_steps=6, eval_every_steps=2),
                           tmp_path)
  assert [r["step"] for r in plots.read_metrics(tmp_path / "metrics.jsonl")
          if r["split"] == "val"] == [4, 6]
