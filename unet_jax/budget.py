"""Fits a run's schedule into a wall-time budget (config.time_budget_minutes).

The loop times TIMED_STEPS steps after the compiling one and the prefetched batches (and the
second loss's step against the first's), then trains the configured
num_train_steps or the steps that fit the budget, whichever are fewer. The learning-rate
schedule and the second-loss switch (a reference to num_train_steps in the configs) follow the
fitted count. The steps before the decision ran under the configured schedule, which equals the
fitted one during warmup_cosine's warm-up and for constant (checked: a warning when not).
If the run then falls behind (a machine whose speed drifts), an evaluation re-fits it to fewer
steps, the schedule going on from the rate it reached (a warp, see Decision.warp). Decisions are
kept in workdir/time_budget.json, so a resumed run trains the same schedule.
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
from unet_jax.data import pipeline
from unet_jax.errors import ConfigError

RECORD_NAME = "time_budget.json"
# Steps timed after the first (compiling) one: training steps all the same, inside the usual
# warm-up, so the decision costs nothing but one wait for the device.
TIMED_STEPS = 20
PLANNED_FRACTION = 0.95  # Of the budget: the rest absorbs drift of the step time.
EVAL_OVERHEAD_SECONDS = 2.0  # Checkpoint, curves and prediction grid of one evaluation.
clock = time.monotonic  # Seconds; what the budget is measured with (tests replace it).


def enabled(config) -> bool:
  return config.get("time_budget_minutes", 0) > 0


def planned_steps(config, workdir) -> int:
  """The steps a run in `workdir` trains: the fitted count once decided, else the config's."""
  record = read_record(workdir) if enabled(config) else None
  return record.total_steps() if record else config.num_train_steps


def apply_record(config, workdir: pathlib.Path) -> None:
  """Sets num_train_steps to the count an earlier run in `workdir` fitted, if any."""
  steps = planned_steps(config, workdir)
  if steps != config.num_train_steps:
    logging.info("time budget: training %d steps as this workdir's run decided (%s)", steps,
                 workdir / RECORD_NAME)
    config.num_train_steps = steps


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
  # [step, new total] of each re-fit to fewer steps at an evaluation, when the run fell behind.
  refits: list = dataclasses.field(default_factory=list)

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

  def total_steps(self) -> int:
    return self.refits[-1][1] if self.refits else self.fitted_steps

  def warp(self, extra=()):
    """(count, position) knots of the fitted schedule's pace after the re-fits (and an `extra`
    [step, total] one), or None.

    Before a re-fit at count t the schedule runs at its own pace; from t it covers what was
    left of it by the new total: the rate goes on from where it was, with no jump.
    """
    refits = list(self.refits) + ([list(extra)] if extra else [])
    if not refits:
      return None
    knots = [(0.0, 0.0), (float(self.fitted_steps), float(self.fitted_steps))]
    for step, total in refits:
      counts, positions = zip(*knots)
      here = float(np.interp(step, counts, positions))
      knots = [k for k in knots if k[0] < step] + [(float(step), here),
                                                   (float(total), float(self.fitted_steps))]
    return tuple(knots)


def read_record(workdir) -> Decision | None:
  path = pathlib.Path(workdir) / RECORD_NAME
  return Decision(**json.loads(path.read_text())) if path.exists() else None


def recorded_warp(config, workdir):
  """The schedule warp of the run in `workdir` (see Decision.warp); None without one."""
  record = read_record(workdir) if enabled(config) else None
  return record.warp() if record else None


def decision_step(config, start_step: int = 0) -> int:
  """The step after which the fitter decides: it skips the compiling step and the batches
  prefetched meanwhile, read and put on the device (those steps wait for no input), then
  times TIMED_STEPS."""
  put_ahead = pipeline.resolve_device_prefetch(config.device_prefetch, jax.default_backend())
  return start_step + 1 + pipeline.read_ahead(config.prefetch) + put_ahead + TIMED_STEPS


def _timed(step_fn, state, batch) -> float:
  """Seconds of one step on a copy of `state` (the step donates its input state)."""
  copy = jax.block_until_ready(
      jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state))
  begin = clock()
  jax.block_until_ready(step_fn(copy, batch))
  return clock() - begin


class Fitter:
  """Times steps after the first ones and fits the run's schedule to the budget, in the loop;
  re-fits it to fewer steps at an evaluation if the run falls behind (this process only)."""

  def __init__(self, run, start_step: int, val_size: int):
    self.run, self.started_at, self.val_size = run, run.started_at, val_size
    self.last = decision_step(run.config, start_step)
    self.first = self.last - TIMED_STEPS
    self.first_done_at = None
    self.decision, self.decided_at, self.checked_at = None, None, None
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
      self.decided_at = self.checked_at = (step, clock())
    return state

  def _stage2_step_seconds(self, state, batch, step_seconds: float) -> float:
    """The second loss's step time: the steady step time x its ratio to the first loss's,
    both timed alone on copies of the state (after one call that compiles the second)."""
    if self.run.train_step_stage2 is None:
      return step_seconds
    _timed(self.run.train_step_stage2, state, batch)
    ratio = (_timed(self.run.train_step_stage2, state, batch)
             / _timed(self.run.train_step, state, batch))
    return step_seconds * ratio

  def _decide(self, step: int, state, batch, step_seconds: float):
    config = self.run.config
    stage2_seconds = self._stage2_step_seconds(state, batch, step_seconds)
    eval_batches = math.ceil(self.val_size / config.eval_batch_size)
    # A forward pass costs about a third of a train step of the same batch.
    eval_seconds = (eval_batches * step_seconds * config.eval_batch_size / config.batch_size / 3
                    + EVAL_OVERHEAD_SECONDS)
    # Setup, the compile and the prefetched steps: an upper bound of the compile to come.
    compile_seconds = self.first_done_at - self.started_at
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
    self.decision = Decision(config.time_budget_minutes, config.num_train_steps, fitted, step,
                             step_seconds, stage2_seconds, eval_seconds, compile_seconds)
    if fitted < config.num_train_steps:
      before = self.run.schedule
      state = self._refit(state, fitted)
      if not np.allclose(before[:step], self.run.schedule[:step]):
        logging.warning("time budget: the first %d steps ran under the configured schedule, "
                        "which differs from the fitted one there (only warm-up and constant "
                        "schedules are equal); the run continues on the fitted one", step)
    logging.info("%s", self.decision.summary())
    self._save()
    return state

  def _seconds(self, begin: int, end: int, total: int) -> float:
    """Relative cost of steps begin+1..end of a `total`-step run: 1 a first-loss step, the
    measured ratio a second-loss one (its switch at the configured fraction of `total`)."""
    decision, config = self.decision, self.run.config
    ratio = decision.stage2_step_seconds / decision.step_seconds
    if self.run.train_step_stage2 is None:
      return end - begin
    switch = optim.second_loss_start(config, total)
    second = max(0, end - max(begin, switch - 1))
    return (end - begin - second) + ratio * second

  def after_evaluation(self, step: int, state):
    """Re-fits to fewer steps if, at the pace since the decision or since the last evaluation
    (evaluations included), the run would overrun its budget; returns the state (with the
    re-fitted optimizer)."""
    config = self.run.config
    if self.decided_at is None or step >= config.num_train_steps:
      return state
    now = clock()
    total = config.num_train_steps
    # The slower of the pace since the decision and since the last evaluation: a machine that
    # slowed down recently is planned at its recent pace (on the AVX2 VM the step time wandered
    # between 1.2 and 2.3 s within the hour).
    paces = [(now - begun) / self._seconds(begun_step, step, total)
             for begun_step, begun in (self.decided_at, self.checked_at) if begun_step < step]
    self.checked_at = (step, now)
    if not paces:  # An evaluation at the step of the decision: nothing timed since.
      return state
    pace = max(paces)
    left = config.time_budget_minutes * 60 - (now - self.started_at)
    if pace * self._seconds(step, total, total) <= left:
      return state
    fits = lambda n: pace * self._seconds(step, n, n) <= left * PLANNED_FRACTION
    refit = next((n for n in range(total - 1, step, -1) if fits(n)), step + 1)
    refit = int(parallel.broadcast_from_first(refit))
    try:
      state = self._refit(state, refit, self.decision.warp(extra=(step, refit)))
    except ConfigError as error:  # An explicit second-loss switch past the new end.
      logging.warning("%s; the schedule stays", error)
      return state
    logging.warning("time budget: at %.2f s a step the run would end %.0f s late; re-fitted "
                    "to %d steps from step %d on (was %d), the learning rate going on from "
                    "where it is", pace, pace * self._seconds(step, total, total) - left, refit,
                    step, total)
    self.decision.refits.append([step, refit])
    self._save()
    return state

  def _refit(self, state, total: int, warp=None):
    """num_train_steps = total: a new optimizer schedule (same state) and step tables."""
    run = self.run
    previous, run.config.num_train_steps = run.config.num_train_steps, total
    # loss_stage2_step follows where it is a reference (as in the shipped configs).
    if run.train_step_stage2 is not None and not 0 < run.config.loss_stage2_step <= total:
      run.config.num_train_steps = previous
      raise ConfigError(
          f"time budget: loss_stage2_step={run.config.loss_stage2_step} is past the "
          f"{total} steps that fit; set it relative to num_train_steps or lower it")
    run.schedule = optim.schedule_table(run.config, total, warp)
    return state.replace(tx=optim.make_optimizer(run.config, total, warp))

  def _save(self) -> None:
    if jax.process_index() == 0:
      record = json.dumps(dataclasses.asdict(self.decision), indent=2) + "\n"
      (self.run.workdir / RECORD_NAME).write_text(record)
      (self.run.workdir / "config.json").write_text(
          self.run.config.to_json_best_effort(indent=2))
