"""The training loop: data -> sharded jitted steps -> metrics, checkpoints and plots."""

import json
import logging
import os
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from unet_jax import checkpoints, data, models, optim, parallel, plots, steps
from unet_jax.data import augment, pipeline
from unet_jax.errors import WorkdirError
from unet_jax.metrics import scores_from_sums


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


class MetricsLog:
  """Appends one JSON record per line to workdir/metrics.jsonl (process 0 only)."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.enabled = jax.process_index() == 0

  def write(self, step: int, split: str, values: dict) -> None:
    if self.enabled:
      record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def evaluate(state, eval_step, source, config, mesh) -> dict:
  """Loss and scores over a whole split; sums stay on the device until the end."""
  totals = None
  for batch in pipeline.eval_batches(source, global_batch_size=config.eval_batch_size,
                                     shard=parallel.process_shard()):
    sums = eval_step(state, parallel.shard_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  return scores_from_sums(jax.device_get(totals))


def save_prediction_grid(state, predict_fn, source, config, mesh, path) -> None:
  """image / truth / prediction rows for the first validation examples."""
  count = min(len(source), config.eval_batch_size)
  examples = [source[i] for i in range(count)]
  images = np.stack([e["image"] for e in examples])
  probabilities = jax.device_get(predict_fn(
      state, jax.device_put(images, parallel.replicated(mesh))))
  if probabilities.shape[-1] == 1:
    predicted = (probabilities[..., 0] > 0.5).astype(np.int32)
  else:
    predicted = probabilities.argmax(-1)
  plots.plot_predictions(images, [e["mask"] for e in examples], predicted, path,
                         num_classes=max(config.num_classes, 2))


def _initial_state(config, mesh, train_source):
  model = models.from_config(config)
  tx = optim.make_optimizer(config, config.num_train_steps)
  sample = np.asarray(train_source[0]["image"])[None]
  state = jax.jit(lambda s: steps.create_train_state(model, tx, s, config.seed),
                  out_shardings=parallel.replicated(mesh))(sample)
  return model, state


def _make_train_iterator(config, train_source):
  return iter(pipeline.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      augment=augment.make_augment(config.augment), shard=parallel.process_shard(),
      num_workers=config.num_workers, prefetch=config.prefetch))


class TrainLogger:
  """Writes train metrics one step late, so reading them never stalls the device.

  Throughput is measured between two reads: the steps completed over the wall time.
  """

  def __init__(self, log: MetricsLog, bar, batch_size: int):
    self.log, self.bar, self.batch_size = log, bar, batch_size
    self.mark = None  # (step, time) of the last point where the device was known idle.

  def synced(self, step: int) -> None:
    """Records that every step up to `step` has finished now (e.g. after an eval)."""
    self.mark = (step, time.perf_counter())

  def write(self, step: int, metrics) -> None:
    values = jax.device_get(metrics)  # Step `step` is done; the next one is already queued.
    now = time.perf_counter()
    if self.mark is not None and step > self.mark[0]:
      step_time = (now - self.mark[1]) / (step - self.mark[0])
      values.update(images_per_second=self.batch_size / step_time, step_time_ms=step_time * 1e3)
    self.mark = (step, now)
    self.log.write(step, "train", values)
    postfix = {"loss": f"{values['loss']:.4f}"}
    if "images_per_second" in values:
      postfix["img/s"] = f"{values['images_per_second']:.0f}"
    self.bar.set_postfix(postfix)  # The full record is in metrics.jsonl.


def _evaluate_and_checkpoint(step, state, train_iterator, ctx) -> dict:
  config, mesh, val_source, workdir = ctx["config"], ctx["mesh"], ctx["val"], ctx["workdir"]
  scores = evaluate(state, ctx["eval_step"], val_source, config, mesh)
  ctx["log"].write(step, "val", scores)
  logging.info("step %d: validation %s", step,
               ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "class" not in k))
  ctx["checkpoints"].save(step, state, train_iterator, metrics=scores)
  if jax.process_index() == 0:
    plots.plot_curves(workdir / "metrics.jsonl", workdir / "plots" / "loss.png")
    save_prediction_grid(state, ctx["predict"], val_source, config, mesh,
                         workdir / "plots" / "predictions.png")
  return scores


def enable_compilation_cache(cache_dir: str) -> None:
  """Persists compiled XLA programs in `cache_dir` so later runs skip compilation."""
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def train_and_evaluate(config, workdir) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final scores."""
  enable_compilation_cache(config.compilation_cache_dir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  workdir = prepare_workdir(workdir)
  train_source = data.load_split(config, "train")
  val_source = data.load_split(config, "val")
  _, state = _initial_state(config, mesh, train_source)
  train_iterator = _make_train_iterator(config, train_source)
  ckpts = checkpoints.Checkpoints(workdir, max_to_keep=config.max_checkpoints,
                                  best_metric=config.best_metric, best_mode=config.best_mode)
  start_step = ckpts.latest_step() or 0
  if start_step:
    state, train_iterator = ckpts.restore(start_step, state, train_iterator)
    logging.info("resuming from the checkpoint of step %d in %s", start_step, ckpts.directory)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  train_step, eval_step, predict = steps.jit_steps(config)
  log = MetricsLog(workdir / "metrics.jsonl")
  ctx = {"config": config, "mesh": mesh, "val": val_source, "workdir": workdir, "log": log,
         "eval_step": eval_step, "predict": predict, "checkpoints": ckpts}
  logging.info("%d devices, global batch %d (%d per device), %d train / %d val examples",
               mesh.devices.size, config.batch_size, config.batch_size // mesh.devices.size,
               len(train_source), len(val_source))

  scores = {}
  bar = tqdm(range(start_step + 1, config.num_train_steps + 1), initial=start_step,
             total=config.num_train_steps, desc="train", disable=jax.process_index() != 0,
             dynamic_ncols=True)
  logger = TrainLogger(log, bar, config.batch_size)
  previous = None  # (step, metrics) of the step before, read once this one is queued.
  for step in bar:
    batch = parallel.shard_batch(next(train_iterator), mesh)
    state, metrics = train_step(state, batch)
    if previous is not None and previous[0] % config.log_every_steps == 0:
      logger.write(*previous)
    previous = (step, metrics)
    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      if step % config.log_every_steps == 0:
        logger.write(step, metrics)
      scores = _evaluate_and_checkpoint(step, state, train_iterator, ctx)
      logger.synced(step)
      previous = None
  bar.close()
  if not scores and start_step:  # Resumed a finished run: report its latest scores.
    scores = evaluate(state, eval_step, val_source, config, mesh)
  ckpts.close()
  logging.info("done: validation %s; metrics, checkpoints and plots are in %s",
               ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if "class" not in k), workdir)
  return scores
