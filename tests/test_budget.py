"""config.time_budget_minutes: the run fits its schedule into the budget, once, and keeps it."""

import json

import numpy as np
import pytest

from conftest import metrics_by_step, tiny_config
from unet_jax import budget, optim, train
from unet_jax.errors import ConfigError


def test_fit_steps_spends_what_is_left_of_the_budget_on_steps_and_their_evaluations():
  common = dict(budget_seconds=200, elapsed_seconds=10.2, done_steps=5, configured_steps=1000,
                step_seconds=1.0, stage2_step_seconds=1.0, stage2_fraction=0.0,
                eval_seconds=0.0, eval_every_steps=10, compile_seconds=5)
  left = 200 * budget.PLANNED_FRACTION - 15.2
  assert budget.fit_steps(**common) == 5 + int(left)
  # A slower second loss for a third of the steps (1.5 s a step on average), or an evaluation
  # of 5 s every 10 steps, leave fewer.
  slower = budget.fit_steps(**{**common, "stage2_step_seconds": 2.5, "stage2_fraction": 1 / 3})
  assert slower == 5 + int(left / 1.5) < 5 + int(left)
  assert budget.fit_steps(**{**common, "eval_seconds": 5.0}) == slower
  # Never more than configured, never fewer than done.
  assert budget.fit_steps(**{**common, "configured_steps": 50}) == 50
  assert budget.fit_steps(**{**common, "elapsed_seconds": 500}) == 5


def _budget_config(**overrides):
  """A tiny two-stage warmup_cosine run of 10000 configured steps: far more than will fit."""
  config = tiny_config(num_train_steps=10000, eval_every_steps=20, log_every_steps=1,
                       schedule="warmup_cosine", warmup_steps=30,
                       loss_stage2="lovasz_hinge", **overrides)
  config.loss_stage2_step = config.get_ref("num_train_steps") * 2 // 3  # As configs/tgs.py.
  return config


class FakeClock:
  """Advances `seconds` a call, then `later` a call after `calls` calls: measured times are
  the same every run. A run reads it once at setup, twice around the timed steps, six times
  timing single steps (the second loss twice, the first once), once for the elapsed time and
  once at the decision (11 calls), then once per evaluation."""

  def __init__(self, seconds=1.0, calls=None, later=None):
    self.now, self.count, self.seconds, self.calls, self.later = -seconds, 0, seconds, calls, later

  def __call__(self) -> float:
    self.count += 1
    late = self.calls is not None and self.count > self.calls
    self.now += self.later if late else self.seconds
    return self.now


DECISION_CALLS = 11


@pytest.fixture
def seconds_per_call(monkeypatch):
  """budget.clock advancing one second a call."""
  monkeypatch.setattr(budget, "clock", FakeClock())


def test_a_budget_fits_the_schedule_and_a_resumed_run_keeps_it(tmp_path, seconds_per_call,
                                                             caplog):
  caplog.set_level("INFO")
  config = _budget_config(time_budget_minutes=0.35)
  train.train_and_evaluate(config, tmp_path)
  record = json.loads((tmp_path / budget.RECORD_NAME).read_text())
  fitted = record["fitted_steps"]
  assert record["configured_steps"] == 10000
  # Decided inside the warm-up, the cosine part under the fitted count only.
  assert record["decided_at_step"] == budget.decision_step(config) < 30 < fitted < 10000
  expected = budget.fit_steps(
      budget_seconds=0.35 * 60, elapsed_seconds=DECISION_CALLS - 2,
      done_steps=record["decided_at_step"], configured_steps=10000,
      step_seconds=1 / budget.TIMED_STEPS, stage2_step_seconds=1 / budget.TIMED_STEPS,
      stage2_fraction=1 - (10000 * 2 // 3) / 10000, eval_seconds=record["eval_seconds"],
      eval_every_steps=20, compile_seconds=1.0)
  assert fitted == expected
  assert any(f"training {fitted} steps" in r.getMessage() for r in caplog.records)
  assert not any("differs from the fitted one" in r.getMessage() for r in caplog.records)
  # The run stopped at the fitted count, evaluated there, and switched loss at 2/3 of it.
  val, train_records = metrics_by_step(tmp_path, "val"), metrics_by_step(tmp_path, "train")
  assert max(val) == max(train_records) == fitted
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["num_train_steps"] == fitted
  assert saved["loss_stage2_step"] == fitted * 2 // 3
  assert any(f"step {fitted * 2 // 3}: training with lovasz_hinge" in r.getMessage()
             for r in caplog.records)
  # The learning rate followed the fitted schedule (cosine to zero at `fitted`), not 10000's,
  # and the run is the one configured with `fitted` steps from the start: the same losses.
  fitted_config = _budget_config()
  fitted_config.num_train_steps = fitted
  logged = np.array([train_records[s]["learning_rate"] for s in range(1, fitted + 1)])
  np.testing.assert_allclose(logged, optim.schedule_table(fitted_config, fitted)[:fitted],
                             rtol=1e-6)
  assert not np.allclose(logged, optim.schedule_table(_budget_config(), 10000)[:fitted])
  train.train_and_evaluate(fitted_config, tmp_path / "fitted_from_the_start")
  direct = metrics_by_step(tmp_path / "fitted_from_the_start", "train")
  assert sorted(direct) == sorted(train_records)
  np.testing.assert_allclose([direct[s]["loss"] for s in direct],
                             [train_records[s]["loss"] for s in direct], rtol=1e-6)
  # Resuming with the same command trains no further and is not refused as another config.
  train.train_and_evaluate(_budget_config(time_budget_minutes=0.35), tmp_path)
  assert max(metrics_by_step(tmp_path, "train")) == fitted
  assert budget.planned_steps(_budget_config(time_budget_minutes=0.35), tmp_path) == fitted
  assert budget.planned_steps(_budget_config(), tmp_path) == 10000  # No budget: configured.


def test_a_budget_spent_before_training_is_refused_in_one_line(tmp_path, seconds_per_call):
  config = _budget_config(time_budget_minutes=0.05)
  spent = f"time_budget_minutes=0.05 is spent after {budget.decision_step(config)} steps"
  with pytest.raises(ConfigError, match=spent):
    train.train_and_evaluate(config, tmp_path)


def test_a_run_that_falls_behind_is_refitted_at_an_evaluation(tmp_path, monkeypatch, caplog):
  # Five seconds a call once decided: 1 s a step between evaluations, far slower than timed.
  monkeypatch.setattr(budget, "clock", FakeClock(calls=DECISION_CALLS, later=5.0))
  caplog.set_level("INFO")
  train.train_and_evaluate(_budget_config(time_budget_minutes=0.35), tmp_path)
  record = budget.read_record(tmp_path)
  assert len(record.refits) == 1
  refit_step, total = record.refits[0]
  assert refit_step == 40 and refit_step < total < record.fitted_steps  # The first evaluation.
  assert any(f"re-fitted to {total} steps from step 40" in r.getMessage()
             for r in caplog.records)
  train_records = metrics_by_step(tmp_path, "train")
  assert max(train_records) == max(metrics_by_step(tmp_path, "val")) == total
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == total
  # The rate goes on from where it was (no jump) and falls faster, on the warped schedule.
  config = _budget_config()
  config.num_train_steps = total
  logged = np.array([train_records[s]["learning_rate"] for s in range(1, total + 1)])
  np.testing.assert_allclose(logged, optim.schedule_table(config, total, record.warp())[:total],
                             rtol=1e-6)
  unwarped = optim.schedule_table(_budget_config(), record.fitted_steps)
  # Up to the re-fit the fitted schedule; after it, no jump: one update's worth of change.
  t = refit_step
  np.testing.assert_allclose(logged[:t], unwarped[:t], rtol=1e-6)
  assert 0 < logged[t - 1] - logged[t] < 3 * (logged[t - 2] - logged[t - 1])
  assert logged[total - 1] < unwarped[total - 1]
  # A resumed run trains the re-fitted schedule to its end and no further.
  train.train_and_evaluate(_budget_config(time_budget_minutes=0.35), tmp_path)
  assert max(metrics_by_step(tmp_path, "train")) == total


def test_the_decision_skips_the_batches_put_on_the_device_ahead():
  """Beside a GPU the first device_prefetch steps find their batch already on the device: the
  fitter must not time them as if the pipeline kept up."""
  inline = budget.decision_step(_budget_config(device_prefetch=0), start_step=7)
  assert budget.decision_step(_budget_config(device_prefetch=3), start_step=7) == inline + 3
  assert budget.decision_step(_budget_config(device_prefetch=-1)) == inline - 7  # CPU: inline.
