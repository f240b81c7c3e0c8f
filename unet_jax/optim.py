"""optax optimizers, learning-rate schedules and reduce-on-plateau built from a config."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from unet_jax.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def make_schedule(config, total_steps: int, warp=None) -> optax.Schedule:
  """constant | warmup_cosine | warmup_cosine_restart | one_cycle, peaking at
  `config.learning_rate`. warmup_cosine_restart: two cycles, as two-stage Kaggle recipes train:
  a warm-up cosine that reaches zero where the second loss starts (loss_stage2_step), then a
  cosine from `restart_peak` x the peak to zero.

  `warp` ((count, position) knots, see budget.warp_knots) runs the schedule of the last
  knot's position in total at a piecewise-linear pace: a run re-fitted to fewer steps midway
  goes on from the rate it reached and ends its schedule at the last knot's count.
  """
  if warp:
    counts, positions = (np.asarray(k, np.float32) for k in zip(*warp))
    base = make_schedule(config, int(positions[-1]))
    return lambda count: base(jnp.interp(count, counts, positions))
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "warmup_cosine":
    return _warmup_cosine(config, total_steps)
  if config.schedule == "warmup_cosine_restart":
    return _cosine_restart(config, total_steps)
  if config.schedule == "one_cycle":
    return optax.cosine_onecycle_schedule(max(total_steps, 1), lr,
                                          pct_start=config.one_cycle_pct_start)
  raise ConfigError(f"unknown schedule {config.schedule!r}; "
                   "choose constant, warmup_cosine, warmup_cosine_restart or one_cycle")


def _cosine_restart(config, total_steps: int) -> optax.Schedule:
  """Two cosine cycles, the second from the second loss's first step (its share of the
  configured steps, so a schedule fitted to fewer steps restarts at the same fraction)."""
  if not config.get("loss_stage2") or config.loss_stage2_step <= 0:
    raise ConfigError("schedule=warmup_cosine_restart restarts where loss_stage2 starts; set "
                      "--config.loss_stage2 and --config.loss_stage2_step, or use warmup_cosine")
  total_steps = max(total_steps, 2)
  # The update count of the second loss's first step (steps count from 1, updates from 0).
  restart = min(max(second_loss_start(config, total_steps) - 1, 1), total_steps - 1)
  second = optax.cosine_decay_schedule(config.learning_rate * config.restart_peak,
                                       total_steps - restart)
  return optax.join_schedules([_warmup_cosine(config, restart), second], [restart])


def second_loss_start(config, total_steps: int) -> int:
  """The first step (1-based) of loss_stage2 in a `total_steps` run: its configured share of
  num_train_steps, so a schedule fitted to fewer steps switches at the same fraction."""
  return round(total_steps * config.loss_stage2_step / max(config.num_train_steps, 1))


def _warmup_cosine(config, steps: int) -> optax.Schedule:
  """Linear warm-up to the peak, then a cosine to zero at update `steps`."""
  warmup = min(config.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                            max(steps, warmup + 1))


def schedule_table(config, total_steps: int, warp=None) -> np.ndarray:
  """The learning rate at every update count 0 .. total_steps, computed once on this
  process's device: logging a step's rate then reads a host array, with no device work or
  wait inside the training loop."""
  counts = np.arange(total_steps + 1, dtype=np.int32)
  # vmap: optax's piecewise schedules (one_cycle) compare a scalar count with their boundaries.
  schedule = make_schedule(config, total_steps, warp)
  rates = np.asarray(jax.jit(jax.vmap(schedule))(counts), np.float32)
  return np.broadcast_to(rates, counts.shape)  # A constant schedule gives one value.


def rmsprop(schedule, *, decay: float, eps: float, momentum: float, weight_decay: float):
  """torch.optim.RMSprop: L2 weight decay added to the gradient, eps outside the square root,
  momentum on the normalised gradient, the learning rate applied last."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.scale_by_rms(decay=decay, eps=eps, eps_in_sqrt=False),
      optax.trace(decay=momentum) if momentum else optax.identity(),
      optax.scale_by_learning_rate(schedule))


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(schedule, eps=config.adam_eps)
  if config.optimizer == "adamw":
    return optax.adamw(schedule, eps=config.adam_eps, weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
  if config.optimizer == "rmsprop":
    return rmsprop(schedule, decay=config.rmsprop_decay, eps=config.rmsprop_eps,
                   momentum=config.rmsprop_momentum, weight_decay=config.weight_decay)
  raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose {', '.join(OPTIMIZERS)}")


def make_optimizer(config, total_steps: int, warp=None) -> optax.GradientTransformation:
  """adam | adamw | sgd | rmsprop after optional clipping (by value, then by global norm),
  followed, when reduce-on-plateau is on, by its scale (see `plateau_update`); `warp`: see
  make_schedule."""
  optimizer = _base_optimizer(config, make_schedule(config, total_steps, warp))
  clips = []
  if config.grad_clip_value > 0:
    clips.append(optax.clip(config.grad_clip_value))
  if config.grad_clip_norm > 0:
    clips.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if clips:
    optimizer = optax.chain(*clips, optimizer)
  if plateau_enabled(config):
    # Last in the chain: opt_state is (optimizer state, ReduceLROnPlateauState).
    optimizer = optax.chain(optimizer, _scale_by_plateau(config))
  return optimizer


def plateau_enabled(config) -> bool:
  return config.lr_plateau_patience > 0


def check_plateau(config) -> None:
  """Refuses reduce-on-plateau settings that cannot work, naming the field to fix."""
  if not plateau_enabled(config):
    return
  if config.lr_plateau_mode not in ("min", "max"):
    raise ConfigError(f"lr_plateau_mode={config.lr_plateau_mode!r}; "
                      "set --config.lr_plateau_mode to min or max")
  if not 0.0 < config.lr_plateau_factor < 1.0:
    raise ConfigError(f"lr_plateau_factor={config.lr_plateau_factor}; "
                      "set --config.lr_plateau_factor between 0 and 1 (exclusive)")
  if config.lr_plateau_threshold <= 0.0:
    raise ConfigError(f"lr_plateau_threshold={config.lr_plateau_threshold}; "
                      "set --config.lr_plateau_threshold to a positive value, e.g. 1e-4")


def _plateau_transform(config) -> optax.GradientTransformationExtraArgs:
  check_plateau(config)
  return contrib.reduce_on_plateau(
      factor=config.lr_plateau_factor, patience=config.lr_plateau_patience, rtol=0.0,
      atol=config.lr_plateau_threshold, cooldown=config.lr_plateau_cooldown,
      min_scale=config.lr_plateau_min_scale)


def _scale_by_plateau(config) -> optax.GradientTransformation:
  """Multiplies the updates by the plateau scale; the state only changes in plateau_update."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: state.scale.astype(u.dtype) * u, updates), state

  return optax.GradientTransformation(_plateau_transform(config).init, update_fn)


def plateau_update(config, sharding=None):
  """(opt_state, validation scores) -> opt_state advancing reduce-on-plateau by one
  evaluation: optax's transform, jitted, fed the metric (negated in max mode: it minimises)."""
  transform = _plateau_transform(config)
  sign = -1.0 if config.lr_plateau_mode == "max" else 1.0
  metric = config.lr_plateau_metric

  def advance(plateau_state, value):
    _, new_state = transform.update(jnp.zeros(()), plateau_state, value=sign * value)
    return new_state

  advance = jax.jit(advance, **({"out_shardings": sharding} if sharding is not None else {}))

  def update(opt_state, scores: dict):
    if metric not in scores:
      raise ConfigError(f"lr_plateau_metric={metric!r} is not a validation metric; set "
                        f"--config.lr_plateau_metric to one of {', '.join(sorted(scores))}")
    *rest, plateau_state = opt_state
    return (*rest, advance(plateau_state, jnp.float32(scores[metric])))

  return update


def plateau_scale(config, opt_state):
  """The current reduce-on-plateau multiplier of the learning rate (1 when off)."""
  return opt_state[-1].scale if plateau_enabled(config) else 1.0
