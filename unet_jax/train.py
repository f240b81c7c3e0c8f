"""The training loop: data -> sharded jitted steps -> metrics, checkpoints and plots."""

import collections
import dataclasses
import json
import logging
import os
import pathlib

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from unet_jax import (budget, checkpoints, data, host_memory, logs, losses, models, optim,
                      parallel, plots, resilience, runtime, steps, tensorboard)
from unet_jax.data import augment, pipeline, window
from unet_jax.models import torchvision_import
from unet_jax.errors import ConfigError, NonFiniteError, WorkdirError
from unet_jax.metrics import scores_from_sums

# Steps dispatched to the device but not yet finished, at most. Before dispatching step k the
# host waits for step k - MAX_STEPS_IN_FLIGHT (never the step just queued), so the device
# always has the next step queued while the progress bar, img/s and held input batches stay
# within this many steps of the device.
MAX_STEPS_IN_FLIGHT = 2


def prepare_workdir(workdir) -> pathlib.Path:
  """Creates the workdir (and plots/) or raises a one-line WorkdirError saying why it cannot."""
  path = pathlib.Path(workdir).expanduser().absolute()
  existing = next(p for p in [path, *path.parents] if p.exists())
  if not existing.is_dir():
    raise WorkdirError(f"workdir {path}: {existing} is a file, not a directory; "
                       "choose another --workdir")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {path}: no permission to write in {existing}; "
                       "choose a --workdir you can write to")
  try:
    (path / "plots").mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create workdir {path}: {e.strerror}; "
                       "choose a --workdir you can write to") from e
  return path


def evaluate(state, eval_step, source, config, mesh) -> dict:
  """Loss and scores over a whole split; sums stay on the device until the end."""
  totals = None
  for batch in pipeline.eval_batches(source, global_batch_size=config.eval_batch_size,
                                     shard=parallel.process_shard()):
    sums = eval_step(state, parallel.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  return scores_from_sums(parallel.to_host(totals))


def save_prediction_grid(state, predict_fn, source, config, mesh, path) -> None:
  """image / truth / prediction rows for the first validation examples."""
  count = min(len(source), config.eval_batch_size)
  examples = [source[i] for i in range(count)]
  images = np.stack([e["image"] for e in examples])
  # Every process computes (the arrays span all of them); process 0 draws.
  probabilities = parallel.to_host(predict_fn(state, parallel.replicate(images, mesh)))
  if jax.process_index() != 0:
    return
  if probabilities.shape[-1] == 1:
    predicted = (probabilities[..., 0] > 0.5).astype(np.int32)
  else:
    predicted = probabilities.argmax(-1)
  plots.plot_predictions(images, [e["mask"] for e in examples], predicted, path,
                         num_classes=max(config.num_classes, 2))


def _initial_state(config, mesh, train_source, warp=None):
  """The replicated initial TrainState (with an imported encoder when config asks); `warp`:
  the schedule's pace after time-budget re-fits (budget.recorded_warp)."""
  model = models.from_config(config)
  tx = optim.make_optimizer(config, config.num_train_steps, warp)
  # The sample only gives shapes; as a closed-over constant it needs no cross-process input.
  sample = np.asarray(train_source[0]["image"])[None]
  state = jax.jit(lambda: steps.create_train_state(model, tx, sample, config.seed),
                  out_shardings=parallel.replicated(mesh))()
  if config.model.get("pretrained"):
    state = _with_pretrained_encoder(state, config.model.pretrained, mesh)
  return state


def _with_pretrained_encoder(state, path, mesh):
  """Replaces the ResNet encoder's weights by a torchvision state_dict file's."""
  variables = torchvision_import.load_torchvision_resnet(
      os.path.expanduser(path), parallel.to_host({"params": state.params,
                                                  "batch_stats": state.batch_stats}))
  variables = jax.tree.map(lambda x: parallel.replicate(x, mesh), variables)
  logging.info("encoder initialised from %s", path)
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _train_transform(config):
  """Augmentation, then the paper's boundary weight map if asked: (element, rng) -> element."""
  augment_fn = augment.make_augment(config.augment)
  weight_map = losses.weight_map_transform(config)
  if weight_map is None:
    return augment_fn

  def transform(element, rng):
    return weight_map(augment_fn(element, rng) if augment_fn else element)

  return transform


def _make_train_iterator(config, train_source, mesh=None):
  """Host batches; with a mesh, global arrays put on it config.device_prefetch batches ahead."""
  ds = pipeline.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      augment=_train_transform(config), shard=parallel.process_shard(),
      num_workers=pipeline.resolve_workers(config.num_workers, jax.default_backend()),
      prefetch=config.prefetch)
  if mesh is not None:
    ds = pipeline.put_ahead(ds, lambda batch: parallel.shard_batch(batch, mesh),
                            pipeline.resolve_device_prefetch(config.device_prefetch,
                                                             jax.default_backend()))
  return iter(ds)


def _validation_source(config):
  """The val split; where training padded smaller images (TGS :small, 101 -> 128), scored only on
  the stored pixels, as Kaggle scores them."""
  source = data.load_split(config, "val")
  scored_window = window.native_window(source, config)
  return window.CentreWindow(source, scored_window) if scored_window else source


def _check_choices(config) -> None:
  if config.nan_policy not in ("skip", "stop"):
    raise ConfigError(f"nan_policy={config.nan_policy!r}; set --config.nan_policy to skip or stop")
  for name in ("best_mode", "early_stopping_mode"):
    if config[name] not in ("min", "max"):
      raise ConfigError(f"{name}={config[name]!r}; set --config.{name} to min or max")
  models.check_conv_impl(config.model)  # Before anything is written.
  if config.get("loss_stage2"):
    losses.get_loss(config.loss_stage2)  # An unknown name is a ConfigError now.
    if not 0 < config.loss_stage2_step <= config.num_train_steps:
      raise ConfigError(f"loss_stage2_step={config.loss_stage2_step} is not in 1.."
                        f"{config.num_train_steps}; set --config.loss_stage2_step to the step "
                        "the second loss starts at")
  optim.make_optimizer(config, config.num_train_steps)  # Unknown optimizer, schedule, plateau.


def in_second_stage(config, step: int) -> bool:
  """Whether step `step` (1-based) trains with config.loss_stage2."""
  return bool(config.get("loss_stage2")) and step >= config.loss_stage2_step


@dataclasses.dataclass
class Run:
  """Everything the loop needs besides the train state and the data iterator."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  val_source: object
  checkpoints: checkpoints.Checkpoints
  log: logs.MetricsLog
  train_step: object
  train_step_stage2: object  # With config.loss_stage2: the step from loss_stage2_step on.
  eval_step: object
  predict: object
  early_stopping: resilience.EarlyStopping
  best: resilience.EarlyStopping  # Tracks best_metric only; never stops the run.
  schedule: np.ndarray  # Learning rate by optimizer update count (host table, see optim).
  plateau: object  # optim.plateau_update, or None when reduce-on-plateau is off.
  lr_scale: float = 1.0  # The reduce-on-plateau multiplier in the state (host copy).
  started_at: float = 0.0  # budget.clock() when setup began (the time budget counts it).
  skipped_seen: int = 0

  def step_fn(self, step: int):
    """The jitted train step of `step`: the second loss's from loss_stage2_step on."""
    if not in_second_stage(self.config, step):
      return self.train_step
    if step == self.config.loss_stage2_step:
      logging.info("step %d: training with %s from now on (loss_stage2)", step,
                   self.config.loss_stage2)
    return self.train_step_stage2

  def progress(self) -> dict:
    return {"early_stopping": self.early_stopping.to_json(), "best": self.best.to_json()}

  def learning_rate(self, step: int, values: dict) -> float:
    """The rate step `step` used: schedule(updates applied before it) x plateau scale."""
    count = step - 1 - int(values.get("nonfinite_steps", 0))  # Skipped updates leave it.
    return float(self.schedule[count]) * self.lr_scale  # No device work: host values.

  def sync_lr_scale(self, state) -> None:
    self.lr_scale = float(parallel.to_host(optim.plateau_scale(self.config, state.opt_state)))

  def reduce_on_plateau(self, state, scores: dict):
    """Advances reduce-on-plateau by one evaluation of its validation metric."""
    if self.plateau is None:
      return state
    previous = self.lr_scale
    state = state.replace(opt_state=self.plateau(state.opt_state, scores))
    self.sync_lr_scale(state)
    if self.lr_scale != previous:
      logging.info("validation %s on a plateau: learning-rate scale %.3g -> %.3g",
                   self.config.lr_plateau_metric, previous, self.lr_scale)
    return state

  def check_finite(self, metrics) -> None:
    """Reports updates skipped for a non-finite loss/gradient; raises under nan_policy=stop."""
    count = int(metrics["nonfinite_steps"])
    if count <= self.skipped_seen:
      return
    first = int(metrics["first_nonfinite_step"])
    self.skipped_seen = count
    if self.config.nan_policy == "stop":
      latest = self.checkpoints.latest_step()
      raise NonFiniteError(
          f"non-finite loss or gradient at step {first}; its update was not applied and "
          f"training stopped (nan_policy=stop); the last checkpoint (step {latest}) is intact; "
          "lower the learning rate or set --config.grad_clip_norm, then rerun to resume")
    logging.warning("skipped the update of %d step(s) with a non-finite loss or gradient, "
                    "the first at step %d (nan_policy=skip)", count, first)

  def evaluate_and_checkpoint(self, step, state, train_iterator):
    """Validation, best/early-stopping/plateau bookkeeping, plots, checkpoint.

    Returns (state with the plateau advanced, scores, True to stop). The scalars of `step`
    are on disk before its checkpoint starts; the grid follows the save (as the timing of
    multi-process runs expects), so a kill in between loses that one image.
    """
    scores = evaluate(state, self.eval_step, self.val_source, self.config, self.mesh)
    self.log.write(step, "val", scores)
    logging.info("step %d: validation %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "class" not in k))
    self.best.update(step, scores)
    stop = self.early_stopping.update(step, scores)
    state = self.reduce_on_plateau(state, scores)
    self.log.board.flush()
    self.checkpoints.save(step, state, train_iterator, metrics=scores, progress=self.progress())
    if jax.process_index() == 0:
      plots.plot_curves(self.workdir / "metrics.jsonl", self.workdir / "plots" / "loss.png")
    grid = self.workdir / "plots" / "predictions.png"
    save_prediction_grid(state, self.predict, self.val_source, self.config, self.mesh, grid)
    self.log.board.image(step, "val/predictions", grid)
    if stop:
      es = self.early_stopping
      logging.info("early stopping at step %d: validation %s has not improved for %d "
                   "evaluations (best %.4f at step %d)", step, es.metric,
                   es.evals_without_improvement, es.best_value, es.best_step)
    return state, scores, stop

  def finish(self) -> None:
    """Waits for pending saves and records the best checkpoint in workdir/best.json."""
    self.checkpoints.close()
    self.log.board.close()
    if jax.process_index() == 0 and self.best.best_value is not None:
      record = {"step": self.best.best_step, "metric": self.best.metric,
                "value": self.best.best_value}
      (self.workdir / "best.json").write_text(json.dumps(record) + "\n")


def _restore_or_start(run: Run, state, train_iterator):
  start_step = run.checkpoints.latest_step() or 0
  if start_step:
    state, train_iterator, progress = run.checkpoints.restore(start_step, state, train_iterator)
    if progress is not None:
      run.early_stopping.load(progress["early_stopping"])
      run.best.load(progress["best"])
    logging.info("resuming from the checkpoint of step %d in %s", start_step,
                 run.checkpoints.directory)
  run.log.truncate_after(start_step)  # Drop records a killed run wrote past its checkpoint.
  run.sync_lr_scale(state)
  return state, train_iterator, start_step


def _setup(config, workdir):
  started_at = budget.clock()
  runtime.configure_cpu_dispatch(config.cpu_async_dispatch)  # Before anything asks for a device.
  _check_choices(config)
  # Before JAX starts its CPU thread pool; an unknown setting is refused here.
  host_memory.configure(config.host_malloc)
  runtime.enable_compilation_cache(config.compilation_cache_dir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  workdir = prepare_workdir(workdir)
  if not config.restart:
    budget.apply_record(config, workdir)  # Before comparing configs: the fitted step count.
  resilience.claim_workdir(workdir, config)
  warp = budget.recorded_warp(config, workdir)
  train_source = data.load_split(config, "train")
  val_source = _validation_source(config)
  state = _initial_state(config, mesh, train_source, warp)
  train_iterator = _make_train_iterator(config, train_source, mesh)
  train_step, eval_step, predict = steps.jit_steps(config)
  run = Run(config=config, workdir=workdir, mesh=mesh, val_source=val_source,
            checkpoints=checkpoints.Checkpoints(workdir, max_to_keep=config.max_checkpoints,
                                                best_metric=config.best_metric,
                                                best_mode=config.best_mode),
            log=logs.MetricsLog(workdir / "metrics.jsonl",
                           tensorboard.TensorBoard(workdir / "tensorboard", config.tensorboard)),
            train_step=train_step, eval_step=eval_step, predict=predict,
            train_step_stage2=(steps.jit_steps(config, config.loss_stage2)[0]
                               if config.get("loss_stage2") else None),
            early_stopping=resilience.EarlyStopping(config.early_stopping_patience,
                                                    config.early_stopping_metric,
                                                    config.early_stopping_mode),
            best=resilience.EarlyStopping(0, config.best_metric, config.best_mode),
            schedule=optim.schedule_table(config, config.num_train_steps, warp),
            plateau=(optim.plateau_update(config, parallel.replicated(mesh))
                     if optim.plateau_enabled(config) else None),
            started_at=started_at)
  state, train_iterator, start_step = _restore_or_start(run, state, train_iterator)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  logging.info("%d devices, global batch %d (%d per device), %d train / %d val examples",
               mesh.devices.size, config.batch_size, config.batch_size // mesh.devices.size,
               len(train_source), len(val_source))
  return run, state, train_iterator, start_step


def _next_batch(train_iterator, step: int):
  batch = next(train_iterator)
  if resilience.injected_fault("nan", step):  # Crash tests: a batch that yields NaN.
    batch = dict(batch, image=batch["image"].astype(np.float32) * np.float32(np.nan))
  return batch


def _stop_requested(stop, step: int, log_every_steps: int) -> bool:
  """A SIGTERM/SIGINT seen by any process; with several processes, agreed at log steps."""
  if jax.process_count() == 1:
    return stop.signal_name is not None
  return step % log_every_steps == 0 and parallel.any_process(stop.signal_name is not None)


def _train_loop(run: Run, state, train_iterator, start_step: int, stop) -> dict:
  config = run.config
  scores = {}
  bar = tqdm(range(start_step + 1, config.num_train_steps + 1), initial=start_step,
             total=config.num_train_steps, desc="train", disable=jax.process_index() != 0,
             dynamic_ncols=True)
  logger = logs.TrainLogger(run.log, bar, config.batch_size, run.learning_rate)
  previous = None  # (step, metrics) of the step before, read once this one is queued.
  in_flight = collections.deque()  # Metrics of the steps dispatched last, oldest first.
  fitter = None
  if budget.enabled(config) and budget.read_record(run.workdir) is None:
    fitter = budget.Fitter(run, start_step, len(run.val_source))
  for step in bar:
    if step > config.num_train_steps:  # The time budget fitted fewer steps.
      break
    if resilience.injected_fault("kill", step):
      resilience.die_now()
    batch = _next_batch(train_iterator, step)
    while len(in_flight) >= MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(in_flight.popleft())
    state, metrics = run.step_fn(step)(state, batch)
    in_flight.append(metrics)
    if fitter is not None and not fitter.done:
      state = fitter.after_dispatch(step, state, metrics, batch)
      if fitter.done:  # Every step so far has finished: the device is idle now.
        bar.total = config.num_train_steps
        logger.synced(step)
    if previous is not None and previous[0] % config.log_every_steps == 0:
      run.check_finite(logger.write(*previous))
    previous = (step, metrics)
    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      values = logger.write(step, metrics) if step % config.log_every_steps == 0 else metrics
      run.check_finite(parallel.to_host(values))  # Before the save: never checkpoint a NaN.
      state, scores, early_stop = run.evaluate_and_checkpoint(step, state, train_iterator)
      if fitter is not None:  # Fewer steps if the run fell behind its time budget.
        state = fitter.after_evaluation(step, state)
        bar.total = config.num_train_steps
      logger.synced(step)
      previous = None
      if early_stop:
        break
    elif _stop_requested(stop, step, config.log_every_steps):
      run.check_finite(parallel.to_host(metrics))
      run.checkpoints.save(step, state, train_iterator, progress=run.progress())
      logging.info("%s at step %d: checkpoint saved; resume with the same command",
                   stop.signal_name or "stop request", step)
      break
  bar.close()
  return scores


def train_and_evaluate(config, workdir) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final scores."""
  run, state, train_iterator, start_step = _setup(config, workdir)
  try:
    with resilience.StopRequests() as stop:
      scores = _train_loop(run, state, train_iterator, start_step, stop)
  finally:
    run.finish()
  if not scores and start_step >= config.num_train_steps:  # Resumed a finished run.
    scores = evaluate(state, run.eval_step, run.val_source, config, run.mesh)
  if scores:
    logging.info("done: validation %s; metrics, checkpoints and plots are in %s",
                 ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "class" not in k),
                 run.workdir)
  return scores
