"""Train state and the jitted train, eval and predict steps."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from unet_jax import losses, metrics


class TrainState(train_state.TrainState):
  """params, opt_state and step (from flax) plus BatchNorm statistics, the dropout RNG and
  the record of skipped non-finite updates (kept on device: checking costs no host sync)."""

  batch_stats: Any
  rng: jax.Array
  nonfinite_steps: jax.Array  # How many updates were skipped for a non-finite loss/gradient.
  first_nonfinite_step: jax.Array  # The first such step, or -1.


def normalize_images(images):
  """uint8 (N, H, W[, C]) -> float32 in [-1, 1] with a channel axis; runs on the device."""
  images = images.astype(jnp.float32)
  if images.ndim == 3:
    images = images[..., None]
  return images / 127.5 - 1.0


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, sample_images,
                       seed: int) -> TrainState:
  """Initialises parameters from `seed` on a sample batch (shape only matters).

  Init draws from an 'rbg' key: XLA:CPU compiles it in ~3 s where threefry takes ~20 s, and
  init runs replicated, so it is deterministic. Dropout keeps threefry, whose bits do not
  depend on how the batch is sharded.
  """
  def create():
    init_rng = jax.random.key(seed, impl="rbg")
    dropout_rng = jax.random.fold_in(jax.random.key(seed), 1)
    variables = model.init(init_rng, normalize_images(sample_images), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}),
                             rng=jax.random.key_data(dropout_rng),
                             nonfinite_steps=jnp.zeros((), jnp.int32),
                             first_nonfinite_step=jnp.full((), -1, jnp.int32))

  # One compiled program, not one per operation: called outside jit, op by op, a ResNet-18
  # U-Net took 19 s to initialise (hundreds of small compiles); inside a jit this is inlined.
  return jax.jit(create)()


def _variables(state: TrainState, params=None):
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: dict, *, loss_fn, ignore_index: int | None,
               empty_head_weight: float = 0.0, deep_loss_fn=None,
               deep_supervision_weight: float = 0.0):
  """One optimisation step; returns the new state and device-side scalar metrics.
  `empty_head_weight` scales the image-level BCE of a model's empty-mask head, if it has one;
  `deep_supervision_weight` the `deep_loss_fn` (default `loss_fn`) of its deep-supervision
  logits, halved per level from the finest (deep_supervision_loss)."""
  images = normalize_images(batch["image"])
  weights = losses.pixel_weights(batch["mask"], ignore_index)
  if "weight" in batch:  # Per-pixel loss weights, e.g. losses.BoundaryWeights.
    weights = weights * batch["weight"]
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def compute_loss(params):
    logits, updates = state.apply_fn(_variables(state, params), images, train=True,
                                     rngs={"dropout": dropout_rng},
                                     mutable=["batch_stats", "intermediates"])
    loss = loss_fn(logits, batch["mask"], weights)
    intermediates = updates.pop("intermediates", {})
    sown = intermediates.get("empty_logit")
    if sown is not None and empty_head_weight:
      loss = loss + empty_head_weight * losses.image_bce(sown[0], batch["mask"], weights)
    if "deep_logits" in intermediates and deep_supervision_weight:
      loss = loss + deep_supervision_weight * deep_supervision_loss(
          deep_loss_fn or loss_fn, intermediates["deep_logits"], batch["mask"], weights)
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A conditional, not a select per leaf: the skipped branch never runs, and the update is
  # written in place (a select kept every old optimizer buffer alive: XLA copied them).
  new_state = jax.lax.cond(finite, _apply_update, _skip_update, state, grads,
                           updates.get("batch_stats", state.batch_stats))
  foreground = jnp.sum((batch["mask"] > 0) * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return new_state, {"loss": loss, "grad_norm": grad_norm, "foreground_fraction": foreground,
                     "nonfinite_steps": new_state.nonfinite_steps,
                     "first_nonfinite_step": new_state.first_nonfinite_step}


def deep_supervision_loss(loss_fn, deep_logits, labels, weights):
  """sum_k 2**-k loss_fn(logits_k) over the deep-supervision logits, finest (k = 0) first;
  `deep_logits` comes coarsest first, as UNet sows it."""
  return sum(0.5**k * loss_fn(logits, labels, weights)
             for k, logits in enumerate(reversed(deep_logits)))


def _apply_update(state: TrainState, grads, batch_stats) -> TrainState:
  return state.apply_gradients(grads=grads, batch_stats=batch_stats)


def _skip_update(state: TrainState, grads, batch_stats) -> TrainState:
  """The old weights with the step advanced and the skip recorded, so a NaN never reaches
  parameters, BatchNorm statistics or a checkpoint."""
  del grads, batch_stats
  step = state.step + 1
  first = jnp.where(state.first_nonfinite_step < 0, step, state.first_nonfinite_step)
  return state.replace(step=step, nonfinite_steps=state.nonfinite_steps + 1,
                       first_nonfinite_step=first)


def model_logits(state: TrainState, images):
  """The model's inference logits for uint8 (or 0..255 float) images."""
  return state.apply_fn(_variables(state), normalize_images(images), train=False)


def eval_step(state: TrainState, batch: dict, *, loss_fn, ignore_index: int | None,
              num_classes: int, logits_fn=model_logits):
  """Sums for one eval batch: weighted loss, weight, the confusion matrix and, for binary
  tasks, the TGS metric's per-image sums. `logits_fn(state, images)` may be an ensemble's or a
  test-time augmentation's (inference.averaged_logits)."""
  weights = losses.pixel_weights(batch["mask"], ignore_index, batch.get("valid"))
  if "weight" in batch:  # E.g. 0 on padding that is not part of the original image.
    weights = weights * batch["weight"]
  logits = logits_fn(state, batch["image"])
  predictions = metrics.predicted_labels(logits)
  weight_sum = jnp.sum(weights)
  sums = {
      "loss_sum": loss_fn(logits, batch["mask"], weights) * weight_sum,
      "weight_sum": weight_sum,
      "confusion": metrics.confusion_matrix(predictions, batch["mask"], weights,
                                            max(num_classes, 2)),
  }
  if num_classes == 1:
    sums.update(metrics.tgs_sums(predictions, batch["mask"], weights, batch.get("valid")))
  return sums


def predict_probabilities(state: TrainState, images):
  """Per-pixel probabilities (N, H, W, C): sigmoid for one channel, softmax otherwise."""
  logits = model_logits(state, images)
  return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits)


def jit_steps(config, loss: str = ""):
  """The three steps jitted for `config` (with `loss` instead of config.loss if given);
  train_step donates the old state."""
  ignore_index = config.ignore_index if config.ignore_index >= 0 else None
  # Deep-supervision heads keep the first-stage loss: cheap, and a Lovasz sort per level
  # would cost more than the heads.
  return _jit_steps(loss or config.loss, ignore_index, config.num_classes,
                    float(config.get("empty_head_loss_weight", 0.0)), config.loss,
                    float(config.get("deep_supervision_weight", 0.0)))


@functools.lru_cache(maxsize=16)
def _jit_steps(loss_name: str, ignore_index: int | None, num_classes: int,
               empty_head_weight: float = 0.0, deep_loss_name: str = "",
               deep_supervision_weight: float = 0.0):
  # Cached so that runs in one process (tests, notebooks) reuse compiled steps.
  loss_fn = losses.get_loss(loss_name)
  deep_loss_fn = losses.get_loss(deep_loss_name) if deep_loss_name else None
  train = jax.jit(functools.partial(train_step, loss_fn=loss_fn, ignore_index=ignore_index,
                                    empty_head_weight=empty_head_weight,
                                    deep_loss_fn=deep_loss_fn,
                                    deep_supervision_weight=deep_supervision_weight),
                  donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, loss_fn=loss_fn, ignore_index=ignore_index,
                                       num_classes=num_classes))
  return train, evaluate, jax.jit(predict_probabilities)
