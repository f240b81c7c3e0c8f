"""optax optimizers and learning-rate schedules built from a config."""

import optax
from unet_jax.errors import ConfigError


def make_schedule(config, total_steps: int) -> optax.Schedule:
  """constant | warmup_cosine | one_cycle, peaking at `config.learning_rate`."""
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "warmup_cosine":
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  if config.schedule == "one_cycle":
    return optax.cosine_onecycle_schedule(max(total_steps, 1), lr,
                                          pct_start=config.one_cycle_pct_start)
  raise ConfigError(f"unknown schedule {config.schedule!r}; "
                   "choose constant, warmup_cosine or one_cycle")


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """adam | adamw | sgd (with momentum), after optional global-norm gradient clipping."""
  schedule = make_schedule(config, total_steps)
  if config.optimizer == "adam":
    optimizer = optax.adam(schedule, eps=config.adam_eps)
  elif config.optimizer == "adamw":
    optimizer = optax.adamw(schedule, eps=config.adam_eps, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    optimizer = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
  else:
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose adam, adamw or sgd")
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
  return optimizer
