"""What keeps a long run safe: workdir/config agreement, early stopping, signals, faults."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal

import jax
from absl import logging

from unet_jax import parallel
from unet_jax.errors import WorkdirError

# Fields that may change between a run and its resumption without changing what is trained.
RESUMABLE_FIELDS = frozenset({
    "num_train_steps", "log_every_steps", "eval_every_steps", "max_checkpoints", "num_workers",
    "prefetch", "device_prefetch", "compilation_cache_dir", "data_dir", "restart",
    "early_stopping_patience", "nan_policy", "host_malloc", "cpu_async_dispatch", "tensorboard",
    "model.conv_impl",  # Which kernels run the same math (XLA or oneDNN on the CPU).
    "model.upsample_impl",  # How the same up-convolution is computed ('matmul' was default).
    "time_budget_minutes",  # A run keeps the step count it fitted (workdir/time_budget.json).
})


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(saved: dict, current: dict) -> list[str]:
  """`key (saved -> current)` for every field that differs, resumable fields excepted.

  A field absent from the saved config did not exist when that run started (the package
  gained it since) and is not a difference.
  """
  saved, current = _flatten(saved), _flatten(current)
  keys = sorted(saved.keys() - RESUMABLE_FIELDS)
  return [f"{k} ({saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r})"
          for k in keys if saved.get(k) != current.get(k)]


def _clear_run(workdir: pathlib.Path) -> None:
  for name in ("checkpoints", "plots", "tensorboard"):
    shutil.rmtree(workdir / name, ignore_errors=True)
  for name in ("metrics.jsonl", "config.json", "best.json", "time_budget.json"):
    (workdir / name).unlink(missing_ok=True)
  (workdir / "plots").mkdir(parents=True, exist_ok=True)
  logging.info("restart=True: cleared the previous run in %s", workdir)


def claim_workdir(workdir: pathlib.Path, config) -> None:
  """Refuses a workdir that holds a different run; with restart=True, clears it first."""
  if config.restart:
    if jax.process_index() == 0:
      _clear_run(workdir)
    parallel.sync("claim_workdir")  # The others wait until process 0 has cleared it.
    return
  saved_path = workdir / "config.json"
  if not saved_path.exists():
    return
  current = json.loads(config.to_json_best_effort())
  differences = config_differences(json.loads(saved_path.read_text()), current)
  if differences:
    raise WorkdirError(
        f"workdir {workdir} holds a run with a different config: {'; '.join(differences)}; "
        "rerun with --config.restart=True to replace it, or choose another --workdir")


@dataclasses.dataclass
class EarlyStopping:
  """Counts evaluations without improvement of one metric; saved in every checkpoint."""

  patience: int
  metric: str
  mode: str
  best_value: float | None = None
  best_step: int = 0
  evals_without_improvement: int = 0

  def update(self, step: int, scores: dict) -> bool:
    """Records an evaluation; True when training should stop."""
    value = scores[self.metric]
    improved = self.best_value is None or (
        value < self.best_value if self.mode == "min" else value > self.best_value)
    if improved:
      self.best_value, self.best_step, self.evals_without_improvement = value, step, 0
    else:
      self.evals_without_improvement += 1
    return self.patience > 0 and self.evals_without_improvement >= self.patience

  def to_json(self) -> dict:
    return {"best_value": self.best_value, "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement}

  def load(self, saved: dict) -> None:
    self.best_value = saved["best_value"]
    self.best_step = saved["best_step"]
    self.evals_without_improvement = saved["evals_without_improvement"]


class StopRequests:
  """Turns SIGTERM/SIGINT into a flag the loop reads at the next step boundary.

  `StopRequests.last_signal_name`: the signal the latest block saw (None: it ran to its end),
  so that a caller running several trainings in turn (cross_validate) stops with them.
  """

  last_signal_name: str | None = None

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._request)
      except ValueError:  # Not the main thread (e.g. a notebook worker): leave signals alone.
        pass
    return self

  def _request(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    StopRequests.last_signal_name = self.signal_name
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def injected_fault(kind: str, step: int) -> bool:
  """True where UNET_JAX_FAULT (e.g. 'kill@12,nan@7,kill_during_save@20') names this step.

  Used by the crash tests to fail at a known point; unset in normal runs.
  """
  spec = os.environ.get("UNET_JAX_FAULT", "")
  return f"{kind}@{step}" in spec.split(",")


def die_now() -> None:
  """Ends the process as `kill -9` would: no cleanup, no flushing."""
  os.kill(os.getpid(), signal.SIGKILL)
