"""Optimizers and schedules from the config: RMSprop as PyTorch's, clipping by value, and
reduce-on-plateau driven by a validation metric once per evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from tests.conftest import tiny_config
from unet_jax import optim, train
from unet_jax.errors import ConfigError


def _params():
  return {"w": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)}


def _gradients(steps: int):
  """Fixed gradients, large enough for clipping by value to matter."""
  rng = np.random.default_rng(1)
  return [rng.normal(scale=3.0, size=(3, 4)).astype(np.float32) for _ in range(steps)]


def _run(tx, params, gradients):
  state = tx.init(params)
  for g in gradients:
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_rmsprop_matches_torch_rmsprop_with_momentum_weight_decay_and_clip_value():
  """milesial/Pytorch-UNet's step: clip_grad_value_, then RMSprop(weight_decay, momentum)."""
  torch = pytest.importorskip("torch")
  config = tiny_config(optimizer="rmsprop", learning_rate=1e-2, schedule="constant",
                       weight_decay=0.1, rmsprop_momentum=0.9, rmsprop_decay=0.99,
                       rmsprop_eps=1e-8, grad_clip_value=1.0)
  gradients = _gradients(6)
  ours, _ = _run(optim.make_optimizer(config, 6), _params(), gradients)
  weight = torch.nn.Parameter(torch.from_numpy(np.array(_params()["w"])).double())
  reference = torch.optim.RMSprop([weight], lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1,
                                  momentum=0.9)
  for g in gradients:
    weight.grad = torch.from_numpy(g).double()
    torch.nn.utils.clip_grad_value_([weight], 1.0)
    reference.step()
  np.testing.assert_allclose(ours["w"], weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_clip_by_value_bounds_every_entry_before_the_optimizer():
  config = tiny_config(optimizer="sgd", momentum=0.0, learning_rate=1.0, schedule="constant",
                       grad_clip_value=0.5)
  tx = optim.make_optimizer(config, 1)
  updates, _ = tx.update({"w": jnp.asarray([-3.0, 0.2, 7.0])}, tx.init({"w": jnp.zeros(3)}))
  np.testing.assert_allclose(updates["w"], [0.5, -0.2, -0.5])


def _plateau_config(**overrides):
  fields = dict(optimizer="sgd", momentum=0.0, learning_rate=1.0, schedule="constant",
                lr_plateau_patience=2, lr_plateau_factor=0.5, lr_plateau_metric="dice",
                lr_plateau_mode="max", lr_plateau_threshold=1e-3)
  return tiny_config(**{**fields, **overrides})


def _scales(config, values):
  """The plateau scale after each evaluation of `config.lr_plateau_metric` = value."""
  tx, update = optim.make_optimizer(config, 100), optim.plateau_update(config)
  opt_state = tx.init(_params())
  scales = []
  for value in values:
    opt_state = update(opt_state, {"dice": 0.0, "loss": 0.0, config.lr_plateau_metric: value})
    scales.append(float(optim.plateau_scale(config, opt_state)))
  return scales, tx, opt_state


def test_plateau_drops_the_rate_by_factor_after_patience_stalled_evaluations():
  # 0.8 is the best; 0.8005 is within the threshold: no improvement.
  scales, _, _ = _scales(_plateau_config(), [0.7, 0.8, 0.8005, 0.79, 0.75, 0.78, 0.8, 0.8])
  assert scales == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]  # A drop restarts the count.


def test_plateau_in_max_mode_never_drops_while_the_metric_rises():
  scales, _, _ = _scales(_plateau_config(), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
  assert scales == [1.0] * 6


def test_plateau_in_min_mode_watches_a_falling_loss_with_cooldown_and_min_scale():
  config = _plateau_config(lr_plateau_metric="loss", lr_plateau_mode="min", lr_plateau_patience=1,
                           lr_plateau_cooldown=1, lr_plateau_min_scale=0.3)
  scales, _, _ = _scales(config, [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95])
  # The evaluation after a drop is not counted (cooldown); the scale stops at 0.3.
  assert scales == pytest.approx([1, 1, 0.5, 0.5, 0.3, 0.3, 0.3])


def test_plateau_scale_multiplies_the_updates_and_the_train_step_leaves_it_alone():
  config = _plateau_config(lr_plateau_patience=1)
  _, tx, opt_state = _scales(config, [0.5, 0.4])  # One stalled evaluation: scale 0.5.
  updates, after = tx.update({"w": jnp.ones((3, 4))}, opt_state, _params())
  np.testing.assert_allclose(updates["w"], -0.5)
  assert jax.tree.map(np.asarray, after[-1]) == jax.tree.map(np.asarray, opt_state[-1])
  assert isinstance(after[-1], contrib.ReduceLROnPlateauState)


def test_without_plateau_the_optimizer_state_is_unchanged_so_old_checkpoints_resume():
  config = tiny_config()
  state = optim.make_optimizer(config, 10).init(_params())
  reference = optax.adam(optim.make_schedule(config, 10)).init(_params())
  assert jax.tree.structure(state) == jax.tree.structure(reference)
  assert optim.plateau_scale(config, state) == 1.0


def test_plateau_metric_missing_from_the_scores_names_the_choices():
  update = optim.plateau_update(_plateau_config(lr_plateau_metric="dise"))
  opt_state = optim.make_optimizer(_plateau_config(), 10).init(_params())
  with pytest.raises(ConfigError, match=r"lr_plateau_metric='dise'.*one of dice, loss"):
    update(opt_state, {"dice": 0.5, "loss": 1.0})


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "rmsprp"}, "choose adam, adamw, sgd, rmsprop"),
    ({"lr_plateau_patience": 2, "lr_plateau_mode": "up"}, "--config.lr_plateau_mode to min or"),
    ({"lr_plateau_patience": 2, "lr_plateau_factor": 1.5}, "--config.lr_plateau_factor between"),
    ({"lr_plateau_patience": 2, "lr_plateau_threshold": 0.0}, "--config.lr_plateau_threshold"),
    ({"schedule": "warmup_cosine_restart"}, "restarts where loss_stage2 starts; set"),
])
def test_bad_choices_raise_one_line_config_errors(overrides, message):
  with pytest.raises(ConfigError, match=message) as error:
    optim.make_optimizer(tiny_config(**overrides), 10)
  assert "\n" not in str(error.value)


def test_cosine_restart_anneals_to_zero_then_restarts_with_the_second_loss():
  """Two cycles: the first reaches ~0 on the last first-loss step, the second starts at
  restart_peak x the peak on the second loss's first step (1-based) and ends at 0."""
  config = tiny_config(schedule="warmup_cosine_restart", warmup_steps=5, learning_rate=1e-2,
                       num_train_steps=60, loss_stage2="lovasz_hinge", restart_peak=0.5)
  config.loss_stage2_step = 40
  rates = optim.schedule_table(config, 60)  # rates[s - 1]: the rate step s updates with.
  first_stage2 = next(s for s in range(1, 61) if train.in_second_stage(config, s))
  assert first_stage2 == 40
  assert rates[5] == pytest.approx(1e-2)  # The peak, after 5 warm-up updates.
  assert rates[first_stage2 - 2] < 1e-4  # The last first-loss step: annealed.
  assert rates[first_stage2 - 1] == pytest.approx(5e-3)  # The restart.
  assert np.all(np.diff(rates[first_stage2 - 1:]) <= 0) and rates[60] == pytest.approx(0.0)
  # A schedule fitted to half the steps restarts at the same fraction.
  half = optim.schedule_table(config, 30)
  assert [c for c in range(6, 31) if half[c] > half[c - 1]] == [19]
