"""Crash-proof training, tested with real processes: kill -9, a kill during a checkpoint
write, injected NaNs, SIGTERM, and a workdir that belongs to another config."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from flax.traverse_util import flatten_dict
import pytest

from tests.conftest import REPO, metrics_by_step, restore_saved_state
from unet_jax import inference, plots, resilience


def _command(workdir, *overrides):
  return [sys.executable, "-m", "unet_jax.main", "--config=tests/tiny_config.py",
          f"--workdir={workdir}", *overrides]


def _env(fault=""):
  return dict(os.environ, JAX_PLATFORMS="cpu", UNET_JAX_FAULT=fault)


def _train(workdir, *overrides, fault="") -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir, *overrides), cwd=REPO, env=_env(fault),
                        capture_output=True, text=True, timeout=300, check=False)


def _params(workdir, step):
  state = restore_saved_state(workdir, step)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _assert_trees_equal(a, b):
  flat_a, flat_b = flatten_dict(a, sep="/"), flatten_dict(b, sep="/")
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


# With batches put on the device ahead by threads, the checkpoint must still hold the batch
# position the steps consumed, not the one the threads reached.
@pytest.mark.parametrize("device_prefetch", ["0", "2"])
def test_kill_9_then_rerun_ends_bitwise_equal_with_the_same_batches(uninterrupted, tmp_path,
                                                                    device_prefetch):
  ahead = f"--config.device_prefetch={device_prefetch}"
  killed = _train(tmp_path, ahead, fault="kill@10")
  assert killed.returncode == -signal.SIGKILL
  resumed_from = max(inference.saved_steps(tmp_path))
  assert resumed_from in (4, 8)  # The save of step 8 is asynchronous: either is complete.
  rerun = _train(tmp_path, ahead)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming from the checkpoint of step {resumed_from}" in rerun.stderr
  # Bitwise on CPU: same programs, same data order, same dropout keys.
  _assert_trees_equal(_params(tmp_path, 12), _params(uninterrupted, 12))
  reference, resumed = metrics_by_step(uninterrupted, "train"), metrics_by_step(tmp_path, "train")
  assert sorted(resumed) == list(range(1, 13))  # No duplicate records from the killed run.
  for step in range(resumed_from + 1, 13):  # The batches after the resume: same content.
    assert resumed[step]["foreground_fraction"] == reference[step]["foreground_fraction"]
    assert resumed[step]["loss"] == reference[step]["loss"]


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(uninterrupted, tmp_path):
  killed = _train(tmp_path, fault="kill_during_save@8")
  assert killed.returncode == -signal.SIGKILL
  assert inference.saved_steps(tmp_path) == [4]  # Step 8 was never completed and never appears.
  assert (tmp_path / "checkpoints" / "4" / "state").is_dir()
  rerun = _train(tmp_path)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from the checkpoint of step 4" in rerun.stderr
  _assert_trees_equal(_params(tmp_path, 12), _params(uninterrupted, 12))


def _all_finite(tree) -> bool:
  return all(np.isfinite(v).all() for v in flatten_dict(tree).values())


def test_nan_with_policy_stop_names_the_step_and_keeps_checkpoints_finite(tmp_path):
  proc = _train(tmp_path, "--config.nan_policy=stop", fault="nan@6")
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "at step 6" in errors[0] and "step 4" in errors[0]
  assert inference.saved_steps(tmp_path) == [4]
  assert _all_finite(_params(tmp_path, 4))


def test_nan_with_policy_skip_skips_that_update_and_finishes(tmp_path):
  proc = _train(tmp_path, "--config.nan_policy=skip", fault="nan@6")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "the first at step 6 (nan_policy=skip)" in proc.stderr
  records = metrics_by_step(tmp_path, "train")
  assert np.isnan(records[6]["loss"]) and records[12]["nonfinite_steps"] == 1
  for step in inference.saved_steps(tmp_path):
    assert _all_finite(_params(tmp_path, step))
  best = json.loads((tmp_path / "best.json").read_text())
  assert best["metric"] == "dice" and best["step"] in inference.saved_steps(tmp_path)


def test_sigterm_saves_exits_0_and_the_rerun_resumes(tmp_path):
  proc = subprocess.Popen(_command(tmp_path, "--config.num_train_steps=100000"), cwd=REPO,
                          env=_env(), stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (tmp_path / "checkpoints" / "4").is_dir() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  line = next(l for l in stderr.splitlines() if "SIGTERM at step" in l)
  assert line.endswith("checkpoint saved; resume with the same command")
  stopped_at = int(line.split("SIGTERM at step ")[1].split(":")[0])
  assert stopped_at in inference.saved_steps(tmp_path)
  rerun = _train(tmp_path, f"--config.num_train_steps={stopped_at + 2}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming from the checkpoint of step {stopped_at}" in rerun.stderr
  assert max(inference.saved_steps(tmp_path)) == stopped_at + 2


def test_workdir_of_a_different_config_is_refused_and_left_alone(uninterrupted):
  before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
  proc = _train(uninterrupted, "--config.model.features=8", "--config.learning_rate=0.01")
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1
  assert "model.features (4 -> 8)" in errors[0] and "learning_rate (0.003 -> 0.01)" in errors[0]
  assert "--config.restart=True" in errors[0]
  after = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
  assert after == before


def test_restart_true_replaces_the_previous_run(tmp_path):
  assert _train(tmp_path, "--config.num_train_steps=4").returncode == 0
  proc = _train(tmp_path, "--config.restart=True", "--config.model.features=8",
                "--config.num_train_steps=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming" not in proc.stderr
  assert json.loads((tmp_path / "config.json").read_text())["model"]["features"] == 8
  assert [r["step"] for r in plots.read_metrics(tmp_path / "metrics.jsonl")
          if r["split"] == "val"] == [4]


def test_early_stopping_counts_evaluations_without_improvement():
  stopper = resilience.EarlyStopping(patience=2, metric="loss", mode="min")
  assert not stopper.update(1, {"loss": 1.0})
  assert not stopper.update(2, {"loss": 0.5})
  assert not stopper.update(3, {"loss": 0.7})
  assert stopper.update(4, {"loss": 0.6})  # Two evaluations without beating 0.5.
  assert (stopper.best_step, stopper.best_value) == (2, 0.5)
  restored = resilience.EarlyStopping(patience=2, metric="loss", mode="min")
  restored.load(stopper.to_json())
  assert restored == stopper


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path):
  proc = _train(tmp_path, "--config.learning_rate=0.0", "--config.early_stopping_patience=1",
                "--config.early_stopping_metric=loss")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "early stopping at step 8" in proc.stderr
  assert inference.saved_steps(tmp_path)[-1] == 8


def test_fields_added_since_a_run_do_not_block_its_resumption():
  saved = {"model": {"features": 4}, "loss": "bce"}
  current = {"model": {"features": 4, "upsample_impl": "matmul"}, "loss": "bce"}
  assert resilience.config_differences(saved, current) == []
  current["model"]["features"] = 8
  assert resilience.config_differences(saved, current) == ["model.features (4 -> 8)"]
