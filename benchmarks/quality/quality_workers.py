"""The two sides of the time-to-quality benchmark, each run in its own spawned process.

Both sides build the same things from the same config through the project's own code: the
initial TrainState (train._initial_state; the torch twin gets its weights ported), the grain
train iterator (train._make_train_iterator: same batches, same augmentation, same order) and
the validation split scored on the stored 101x101 pixels (train._validation_source). JAX
trains with steps.jit_steps' train_step and optim.make_optimizer; torch with
benchmarks.torch_reference.UNet, the torch twin of the config's loss, torch's Adam/AdamW/SGD
and the optax schedule's learning rate set before every step. Both are scored by the same
code, unet_jax.steps.eval_step on the logits (train.evaluate for JAX).

The training clock runs only while training; evaluation pauses it and is timed apart. torch
evaluates under its training precision (autocast bf16 by default), JAX under the config's.
"""

import collections
import os
import time
import traceback

from unet_jax import host_memory


def timed_training(step, sync, evaluate, budget_s: float, eval_points, max_steps: int) -> list:
  """Calls step(k) for k = 1, 2, ... until `budget_s` seconds of training (or max_steps).

  Evaluates before step 1 and at the first step whose clock passes each of `eval_points`
  (training seconds, the last == budget_s); `sync` makes the clock see finished work only.
  """

  def point(seconds, steps):
    start = time.perf_counter()
    scores = evaluate()
    return {"seconds": seconds, "steps": steps, "iou": scores["iou"],
            "tgs_map": scores.get("tgs_map"), "loss": scores["loss"],
            "eval_s": time.perf_counter() - start}

  points = [point(0.0, 0)]
  pending = sorted(eval_points)
  train_s, count = 0.0, 0
  start = time.perf_counter()
  while pending and count < max_steps:
    count += 1
    step(count)
    if train_s + time.perf_counter() - start >= pending[0] or count == max_steps:
      sync()
      train_s += time.perf_counter() - start
      points.append(point(train_s, count))
      pending = [p for p in pending if p > train_s]
      start = time.perf_counter()
  return points


def _pin_threads(threads: int) -> None:
  """Both sides on the same first `threads` usable cores."""
  cores = sorted(os.sched_getaffinity(0))
  if threads and threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])


def _common(config):
  """Mesh, train source, val source, initial state and train iterator, as train.py builds them."""
  from unet_jax import data, parallel, train  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh()
  train_source = data.load_split(config, "train")
  val_source = train._validation_source(config)  # pylint: disable=protected-access
  state = train._initial_state(config, mesh, train_source)  # pylint: disable=protected-access
  iterator = train._make_train_iterator(config, train_source)  # pylint: disable=protected-access
  return mesh, train_source, val_source, state, iterator


def run_jax(config, budget_s, eval_points, options) -> dict:
  """The project's training path on the clock: jit_steps' train_step, at most
  train.MAX_STEPS_IN_FLIGHT steps in flight, train.evaluate at the eval points."""
  del options
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import parallel, runtime, steps, train  # pylint: disable=import-outside-toplevel
  runtime.configure_cpu_dispatch(config.cpu_async_dispatch)
  runtime.enable_compilation_cache(config.compilation_cache_dir)
  start = time.perf_counter()
  mesh, _, val_source, state, iterator = _common(config)
  train_step, eval_step, _ = steps.jit_steps(config)
  first = parallel.shard_batch(next(iterator), mesh)
  compiled = train_step.lower(state, first).compile()  # Setup, like torch's model build.
  # config.loss_stage2 from loss_stage2_step on (train.in_second_stage), as train.Run does.
  stage2 = (steps.jit_steps(config, config.loss_stage2)[0].lower(state, first).compile()
            if config.get("loss_stage2") else None)
  setup_s = time.perf_counter() - start
  holder = {"state": state, "first": first}
  in_flight = collections.deque()

  def step(k):
    batch = holder.pop("first", None) or parallel.shard_batch(next(iterator), mesh)
    while len(in_flight) >= train.MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(in_flight.popleft())
    use_stage2 = train.in_second_stage(config, k)
    holder["state"], metrics = (stage2 if use_stage2 else compiled)(holder["state"], batch)
    in_flight.append(metrics)

  sync = lambda: jax.block_until_ready(holder["state"])
  evaluate = lambda: train.evaluate(holder["state"], eval_step, val_source, config, mesh)
  points = timed_training(step, sync, evaluate, budget_s, eval_points, config.num_train_steps)
  device = jax.devices()[0]
  return {"points": points, "setup_s": setup_s,
          "info": {"device_name": f"{device.platform}:{device.device_kind}",
                   "model_dtype": config.model.dtype, "host_malloc": config.host_malloc,
                   "max_steps_in_flight": train.MAX_STEPS_IN_FLIGHT,
                   "cpu_async_dispatch": config.cpu_async_dispatch}}


def _torch_optimizer(torch, config, parameters):
  """torch's twin of optim.make_optimizer (the learning rate is set per step)."""
  if config.optimizer == "adam":
    return torch.optim.Adam(parameters, lr=0.0, eps=config.adam_eps)
  if config.optimizer == "adamw":  # optax and torch both decay by lr * weight_decay.
    return torch.optim.AdamW(parameters, lr=0.0, eps=config.adam_eps,
                             weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return torch.optim.SGD(parameters, lr=0.0, momentum=config.momentum,
                           nesterov=config.nesterov)
  raise ValueError(f"optimizer {config.optimizer!r} has no torch twin here")


def _learning_rates(config):
  """The optax schedule's value for every step: step k (1-based) uses schedule(k - 1)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from unet_jax import optim  # pylint: disable=import-outside-toplevel
  schedule = optim.make_schedule(config, config.num_train_steps)
  return np.asarray(schedule(jnp.arange(config.num_train_steps)), np.float64)


def _logits_scorer(config):
  """steps.eval_step on given NHWC logits: the sums train.evaluate adds up for JAX."""
  import types  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import losses, steps  # pylint: disable=import-outside-toplevel
  ignore_index = config.ignore_index if config.ignore_index >= 0 else None

  def score(logits, batch):
    fixed = types.SimpleNamespace(params=None, batch_stats={},
                                  apply_fn=lambda *_, **__: logits)
    return steps.eval_step(fixed, batch, loss_fn=losses.get_loss(config.loss),
                           ignore_index=ignore_index, num_classes=config.num_classes)

  return jax.jit(score)


def _warm_up_and_undo(torch, model, holder, step, first, config) -> None:
  """One step on the first batch, then the weights, BatchNorm statistics and optimizer put
  back: torch's first-step costs (kernel selection, allocator growth) land in setup, as
  JAX's compilation does; the first batch stays step 1's."""
  saved = {key: value.clone() for key, value in model.state_dict().items()}
  step(1, first)
  model.load_state_dict(saved)
  holder["optimizer"] = _torch_optimizer(torch, config, model.parameters())
  holder["first"] = first


def run_torch(config, budget_s, eval_points, options) -> dict:
  """The torch twin on the clock, fed the same batches; options: autocast, channels_last."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_losses, torch_reference  # pylint: disable=import-outside-toplevel
  from unet_jax import models, parallel, train  # pylint: disable=import-outside-toplevel
  from unet_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from unet_jax.metrics import scores_from_sums  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(options["threads"])
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(config.seed)
  start = time.perf_counter()
  _, train_source, val_source, state, iterator = _common(config)
  in_channels = 1 if np.ndim(train_source[0]["image"]) == 2 else train_source[0]["image"].shape[-1]
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  memory_format = torch.channels_last if options["channels_last"] else torch.contiguous_format
  model = torch_reference.from_flax_module(models.from_config(config), in_channels)
  torch_reference.load_flax(model, parallel.to_host({"params": state.params,
                                                     "batch_stats": state.batch_stats}))
  model = model.to(device, memory_format=memory_format).train()
  holder = {"optimizer": _torch_optimizer(torch, config, model.parameters())}
  learning_rates = _learning_rates(config)
  loss_fn = torch_losses.get_loss(config.loss)
  # config.loss_stage2 from loss_stage2_step on (train.in_second_stage), as train.Run does.
  stage2_fn = torch_losses.get_loss(config.loss_stage2) if config.get("loss_stage2") else None
  ignore_index = config.ignore_index if config.ignore_index >= 0 else None
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=options["autocast"])

  def to_input(images):
    """uint8 NHW(C) -> float NCHW in [-1, 1], as steps.normalize_images does on the device."""
    images = torch.from_numpy(np.asarray(images))
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    images = images.to(device).float().contiguous(memory_format=memory_format)
    return images / 127.5 - 1.0

  def step(k, batch=None):
    batch = batch or holder.pop("first", None) or next(iterator)
    optimizer = holder["optimizer"]
    for group in optimizer.param_groups:
      group["lr"] = float(learning_rates[k - 1])
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      logits = model(to_input(batch["image"]))
    labels = torch.from_numpy(np.asarray(batch["mask"])).to(device)
    weights = torch_losses.pixel_weights(labels, ignore_index, batch.get("weight"))
    use_stage2 = train.in_second_stage(config, k)
    (stage2_fn if use_stage2 else loss_fn)(logits.float(), labels, weights).backward()
    if config.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
    optimizer.step()

  scorer = _logits_scorer(config)

  def evaluate():
    model.eval()
    totals = None
    with torch.no_grad():
      for batch in pipeline.eval_batches(val_source, global_batch_size=config.eval_batch_size):
        with autocast():
          logits = model(to_input(batch["image"]))
        logits = logits.float().permute(0, 2, 3, 1).cpu().numpy()
        sums = scorer(logits, batch)
        totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
    model.train()
    return scores_from_sums(parallel.to_host(totals))

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  _warm_up_and_undo(torch, model, holder, step, next(iterator), config)
  sync()
  setup_s = time.perf_counter() - start
  points = timed_training(step, sync, evaluate, budget_s, eval_points, config.num_train_steps)
  return {"points": points, "setup_s": setup_s,
          "info": {"device_name": torch.cuda.get_device_name() if device.type == "cuda"
                   else "cpu", "torch_threads": torch.get_num_threads(),
                   "torch_interop_threads": torch.get_num_interop_threads()}}


def worker(conn, framework: str, config, budget_s: float, eval_points, options) -> None:
  """One run in this (spawned) process; sends ('ok', result) or ('error', traceback)."""
  _pin_threads(options["threads"])
  host_memory.configure(options["malloc"])  # Before either framework starts its threads.
  try:
    run = run_jax if framework == "jax" else run_torch
    start = time.perf_counter()
    result = run(config, budget_s, eval_points, options)
    result["wall_s"] = time.perf_counter() - start
    conn.send(("ok", result))
  except Exception:  # pylint: disable=broad-except
    conn.send(("error", traceback.format_exc(limit=10)))
