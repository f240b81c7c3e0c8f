"""TensorBoard event files, read back with TensorBoard's own reader, and reduce-on-plateau's
learning rate, across a kill -9 and a resume (real processes, as tests/test_resilience.py)."""

import collections
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from tests.conftest import REPO, metrics_by_step
from unet_jax import inference, tensorboard

# tests/tiny_config.py: 12 steps, a log line per step, lr 0.003. Validation every 3 steps; the
# threshold of 1 means no Dice ever counts as better than the first: the rate halves at step 9.
OVERRIDES = ("--config.eval_every_steps=3", "--config.schedule=constant",
             "--config.lr_plateau_patience=2", "--config.lr_plateau_factor=0.5",
             "--config.lr_plateau_threshold=1.0")
VAL_STEPS = [3, 6, 9, 12]
EXPECTED_LR = [0.003] * 9 + [0.0015] * 3


def _train(workdir, fault="") -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "unet_jax.main", "--config=tests/tiny_config.py",
             f"--workdir={workdir}", *OVERRIDES]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                              UNET_JAX_FAULT=fault))


def _accumulator(workdir) -> event_accumulator.EventAccumulator:
  """TensorBoard's reader over workdir/tensorboard, keeping every event, purging none."""
  return event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={"scalars": 0, "images": 0},
      purge_orphaned_data=False).Reload()


def _steps_by_tag(workdir) -> dict:
  """Every summary step of every event file, per tag, in file order (duplicates included)."""
  steps = collections.defaultdict(list)
  for path in sorted((workdir / "tensorboard").glob(tensorboard.EVENTS)):
    for _, event in tensorboard.read_events(path):
      for value in event.summary.value:
        steps[value.tag].append(event.step)
  return steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stderr


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
  """A run killed at step 12 (events flushed up to its last validation), then rerun."""
  workdir = tmp_path_factory.mktemp("resumed")
  killed = _train(workdir, fault="kill@12")
  assert killed.returncode == -signal.SIGKILL
  resumed_from = max(inference.saved_steps(workdir))
  assert resumed_from in (6, 9)  # The save of step 9 is asynchronous: either is complete.
  assert max(_steps_by_tag(workdir)["train/loss"]) >= resumed_from  # Past it: dropped.
  rerun = _train(workdir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming from the checkpoint of step {resumed_from}" in rerun.stderr
  return workdir


def test_event_files_hold_the_train_and_validation_scalars_at_their_steps(uninterrupted):
  workdir, _ = uninterrupted
  events = _accumulator(workdir)
  tags = set(events.Tags()["scalars"])
  assert {"train/loss", "train/grad_norm", "train/images_per_second",
          "train/learning_rate"} <= tags
  train, val = metrics_by_step(workdir, "train"), metrics_by_step(workdir, "val")
  for tag in tags:  # Every value of metrics.jsonl, at its step (float32 in the events).
    split, name = tag.split("/")
    records = train if split == "train" else val
    points = {e.step: e.value for e in events.Scalars(tag)}
    assert points == pytest.approx({s: r[name] for s, r in records.items() if name in r},
                                   rel=1e-6), tag
  assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
  assert {f"val/{name}" for name in val[12] if name not in ("step", "split")} <= tags
  assert [e.step for e in events.Scalars("val/dice")] == VAL_STEPS


def test_event_files_hold_the_prediction_grid_at_each_evaluation(uninterrupted):
  workdir, _ = uninterrupted
  images = _accumulator(workdir).Images("val/predictions")
  assert [i.step for i in images] == VAL_STEPS
  png = workdir / "plots" / "predictions.png"
  assert images[-1].encoded_image_string == png.read_bytes()  # The last grid, as drawn.
  with Image.open(png) as grid:
    assert (images[-1].width, images[-1].height) == grid.size


def test_reduce_on_plateau_halves_the_rate_after_patience_stalled_evaluations(uninterrupted):
  workdir, stderr = uninterrupted
  lrs = [r["learning_rate"] for _, r in sorted(metrics_by_step(workdir, "train").items())]
  assert lrs == pytest.approx(EXPECTED_LR)
  logged = [e.value for e in _accumulator(workdir).Scalars("train/learning_rate")]
  assert logged == pytest.approx(EXPECTED_LR)
  assert "learning-rate scale 1 -> 0.5" in stderr


def test_after_kill_9_and_resume_no_step_appears_twice(uninterrupted, resumed):
  steps = _steps_by_tag(resumed)
  assert steps["train/loss"] == list(range(1, 13))
  assert steps["val/dice"] == VAL_STEPS and steps["val/predictions"] == VAL_STEPS
  for tag, found in steps.items():
    assert len(found) == len(set(found)), tag
  # Bitwise-equal training on CPU: the resumed curve is the uninterrupted one.
  reference = {e.step: e.value for e in _accumulator(uninterrupted[0]).Scalars("train/loss")}
  assert {e.step: e.value for e in _accumulator(resumed).Scalars("train/loss")} == reference


def test_resumed_run_lowers_the_rate_when_the_uninterrupted_run_does(uninterrupted, resumed):
  reference, ours = metrics_by_step(uninterrupted[0], "train"), metrics_by_step(resumed, "train")
  assert sorted(ours) == list(range(1, 13))
  assert [ours[s]["learning_rate"] for s in range(1, 13)] == \
      [reference[s]["learning_rate"] for s in range(1, 13)]


def test_truncation_keeps_earlier_steps_and_drops_later_ones(tmp_path):
  board = tensorboard.TensorBoard(tmp_path / "tb")
  for step in range(1, 6):
    board.scalars(step, "train", {"loss": float(step)})
  board.close()
  for cut, step in ((4, 5), (3, 4)):  # Twice: a resume of a resumed run (same second, pid).
    resumed = tensorboard.TensorBoard(tmp_path / "tb")
    resumed.truncate_after(cut)
    resumed.scalars(step, "train", {"loss": 10.0 * step})
    resumed.close()
  events = event_accumulator.EventAccumulator(str(tmp_path / "tb"), purge_orphaned_data=False)
  points = [(e.step, e.value) for e in events.Reload().Scalars("train/loss")]
  assert points == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_disabled_writer_writes_nothing(tmp_path):
  board = tensorboard.TensorBoard(tmp_path / "tb", enabled=False)
  board.scalars(1, "train", {"loss": 1.0})
  image = tmp_path / "grid.png"
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
  board.image(1, "val/predictions", image)
  board.truncate_after(0)
  board.close()
  assert not (tmp_path / "tb").exists()


def test_tensorflow_is_not_needed_to_write_events():
  code = ("import sys, pathlib, tempfile; from unet_jax import tensorboard; "
          "b = tensorboard.TensorBoard(pathlib.Path(tempfile.mkdtemp())); "
          "b.scalars(1, 'train', {'loss': 1.0}); b.close(); "
          "assert 'tensorflow' not in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
