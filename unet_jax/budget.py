"""Fits a run's schedule into a wall-time budget (config.time_budget_minutes).

The loop times a few steps right after the first (compiling) one, then trains the configured
num_train_steps or the steps that fit the budget, whichever are fewer. The learning-rate
schedule and the second-loss switch (a reference to num_train_steps in the configs) follow the
fitted count. The steps before the decision ran under the configured schedule, which equals the
fitted one during warmup_cosine's warm-up and for constant (checked: a warning when not). The
decision is kept in workdir/time_budget.json, so a resumed run trains the same schedule.
"""

import dataclasses
import json
import logging
import math
import pathlib
import time

import jax
import numpy as np

from unet_jax import optim, parallel
from unet_jax.errors import ConfigError

RECORD_NAME = "time_budget.json"
TIMED_STEPS = 5  # Steps timed after the first (compiling) one.
PLANNED_FRACTION = 0.97  # Of the budget left: the rest absorbs drift of the step time.
EVAL_OVERHEAD_SECONDS = 2.0  # Checkpoint, curves and prediction grid of one evaluation.
clock = time.monotonic  # Seconds; what the budget is measured with (tests replace it).


def enabled(config) -> bool:
  return config.get("time_budget_minutes", 0) > 0


def planned_steps(config, workdir) -> int:
  """The steps a run in `workdir` trains: the fitted count once decided, else the config's."""
  path = pathlib.Path(workdir) / RECORD_NAME
  if enabled(config) and path.exists():
    return int(json.loads(path.read_text())["fitted_steps"])
  return config.num_train_steps


def apply_record(config, workdir: pathlib.Path) -> bool:
  """Sets num_train_steps to the count an earlier run in `workdir` fitted; True if it did."""
  steps = planned_steps(config, workdir)
  if steps == config.num_train_steps:
    return enabled(config) and (workdir / RECORD_NAME).exists()
  logging.info("time budget: training %d steps as this workdir's run decided (%s)", steps,
               workdir / RECORD_NAME)
  config.num_train_steps = steps
  return True


def fit_steps(*, budget_seconds: float, elapsed_seconds: float, done_steps: int,
              configured_steps: int, step_seconds: float, stage2_step_seconds: float,
              stage2_fraction: float, eval_seconds: float, eval_every_steps: int,
              compile_seconds: float) -> int:
  """The most steps (done ones included, at most configured_steps) the budget holds.

  Each further step costs its mean time (the second loss's for `stage2_fraction` of them) plus
  its share of an evaluation; `compile_seconds` is paid once more for the refitted schedule.
  """
  per_step = (step_seconds * (1 - stage2_fraction) + stage2_step_seconds * stage2_fraction
              + eval_seconds / eval_every_steps)
  left = budget_seconds * PLANNED_FRACTION - elapsed_seconds - compile_seconds
  return min(configured_steps, done_steps + max(0, math.floor(left / per_step)))


@dataclasses.dataclass
class Decision:
  """What the budget fitter measured and chose (the workdir's time_budget.json)."""

  budget_minutes: float
  configured_steps: int
  fitted_steps: int
  decided_at_step: int
  step_seconds: float
  stage2_step_seconds: float
  eval_seconds: float
  compile_seconds: float

  def summary(self) -> str:
    hours = self.configured_steps * self.step_seconds / 3600
    if self.fitted_steps == self.configured_steps:
      return (f"time budget {self.budget_minutes:g} min: {self.configured_steps} steps fit "
              f"(measured {self.step_seconds:.3f} s a step)")
    return (f"time budget {self.budget_minutes:g} min: at {self.step_seconds:.3f} s a step "
            f"(second loss {self.stage2_step_seconds:.3f} s, ~{self.eval_seconds:.0f} s an "
            f"evaluation) the configured {self.configured_steps} steps would take "
            f"{hours:.1f} h; training {self.fitted_steps} steps, the schedule fitted to them "
            f"(reproduce elsewhere: --config.num_train_steps={self.fitted_steps} "
            "--config.time_budget_minutes=0)")


class Fitter:
  """Times the steps after `start_step` + 1 and refits the run's schedule once, in the loop."""

  def __init__(self, run, start_step: int, started_at: float, val_size: int):
    self.run, self.started_at, self.val_size = run, started_at, val_size
    self.first, self.last = start_step + 1, start_step + 1 + TIMED_STEPS
    self.first_done_at = None
    self.done = False

  def after_dispatch(self, step: int, state, metrics, batch):
    """Called after each dispatched step; returns the state (with the refitted optimizer)."""
    if step == self.first:
      jax.block_until_ready(metrics)
      self.first_done_at = clock()
    elif step == self.last:
      jax.block_until_ready(metrics)
      step_seconds = (clock() - self.first_done_at) / TIMED_STEPS
      state = self._decide(step, state, batch, step_seconds)
      self.done = True
    return state

  def _stage2_step_seconds(self, state, batch, step_seconds: float) -> float:
    """One timed second-loss step on a copy of the state (after one that compiles it)."""
    stage2 = self.run.train_step_stage2
    if stage2 is None:
      return step_seconds
    copy = lambda: jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
    jax.block_until_ready(stage2(copy(), batch))
    state_copy = jax.block_until_ready(copy())
    begin = clock()
    jax.block_until_ready(stage2(state_copy, batch))
    return clock() - begin

  def _decide(self, step: int, state, batch, step_seconds: float):
    config = self.run.config
    stage2_seconds = self._stage2_step_seconds(state, batch, step_seconds)
    eval_batches = math.ceil(self.val_size / config.eval_batch_size)
    # A forward pass costs about a third of a train step of the same batch.
    eval_seconds = (eval_batches * step_seconds * config.eval_batch_size / config.batch_size / 3
                    + EVAL_OVERHEAD_SECONDS)
    compile_seconds = self.first_done_at - self.started_at  # Setup included: an upper bound.
    stage2_fraction = 0.0
    if self.run.train_step_stage2 is not None:
      stage2_fraction = 1 - config.loss_stage2_step / config.num_train_steps
    fitted = fit_steps(
        budget_seconds=config.time_budget_minutes * 60,
        elapsed_seconds=clock() - self.started_at, done_steps=step,
        configured_steps=config.num_train_steps, step_seconds=step_seconds,
        stage2_step_seconds=stage2_seconds, stage2_fraction=stage2_fraction,
        eval_seconds=eval_seconds, eval_every_steps=config.eval_every_steps,
        compile_seconds=compile_seconds)
    fitted = int(parallel.broadcast_from_first(fitted))  # Every process trains the same.
    if fitted <= step:
      raise ConfigError(
          f"time_budget_minutes={config.time_budget_minutes:g} is spent after {step} steps "
          f"(setup and compiles took {compile_seconds:.0f} s, a step {step_seconds:.2f} s); "
          "raise --config.time_budget_minutes, or set it to 0 to train num_train_steps")
    decision = Decision(config.time_budget_minutes, config.num_train_steps, fitted, step,
                        step_seconds, stage2_seconds, eval_seconds, compile_seconds)
    if fitted < config.num_train_steps:
      state = self._refit(state, step, fitted)
    logging.info("%s", decision.summary())
    if jax.process_index() == 0:
      record = json.dumps(dataclasses.asdict(decision), indent=2) + "\n"
      (self.run.workdir / RECORD_NAME).write_text(record)
      (self.run.workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return state

  def _refit(self, state, step: int, fitted: int):
    """num_train_steps = fitted: a new optimizer schedule (same state) and step tables."""
    run = self.run
    before = run.schedule
    run.config.num_train_steps = fitted  # loss_stage2_step follows where it is a reference.
    if run.train_step_stage2 is not None and not 0 < run.config.loss_stage2_step <= fitted:
      raise ConfigError(
          f"time budget: loss_stage2_step={run.config.loss_stage2_step} is past the "
          f"{fitted} steps that fit; set it relative to num_train_steps or lower it")
    run.schedule = optim.schedule_table(run.config, fitted)
    if not np.allclose(before[:step], run.schedule[:step]):
      logging.warning("time budget: the first %d steps ran under the configured schedule, "
                      "which differs from the fitted one there (only warm-up and constant "
                      "schedules are equal); the run continues on the fitted one", step)
    return state.replace(tx=optim.make_optimizer(run.config, fitted))
