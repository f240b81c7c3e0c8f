"""The PyTorch twin (benchmarks/torch_reference.py) computes what the Flax U-Net computes.

Same weights ported into both models; forward outputs agree to 1e-4 relative, and after three
identical training steps (the project's train_step vs a torch loop, SGD and Adam) parameters
and BatchNorm statistics still agree, for SAME/VALID padding, both upsample modes and with
squeeze-excitation.
"""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from unet_jax import losses, steps
from unet_jax.models import UNet

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("benchmarks.torch_reference")

# (padding, upsample, squeeze_excitation)
CASES = [(padding, upsample, False) for padding in ("SAME", "VALID")
         for upsample in ("transpose", "bilinear")] + [("SAME", "transpose", True)]
IN_CHANNELS, HEIGHT, WIDTH = 2, 14, 10  # Not a multiple of 4: exercises the reflect padding.
LEARNING_RATE = 1e-2


def _batches(count: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    images = rng.uniform(0, 255, (2, HEIGHT, WIDTH, IN_CHANNELS)).astype(np.float32)
    masks = (rng.uniform(size=(2, HEIGHT, WIDTH)) > 0.5).astype(np.uint8)
    yield {"image": images, "mask": masks}


def _to_nchw(images):
  return torch.from_numpy(images).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _initial_state(padding: str, upsample: str, squeeze_excitation: bool):
  """The project's create_train_state, jitted (much faster than eager init) and cached."""
  model = UNet(num_classes=1, features=4, depth=2, padding=padding, upsample=upsample,
               squeeze_excitation=squeeze_excitation)
  sample = next(_batches(1, seed=99))["image"]
  create = lambda images: steps.create_train_state(model, optax.sgd(LEARNING_RATE), images, 0)
  return model, jax.jit(create)(sample)


def _twins(case, tx):
  model, state = _initial_state(*case)
  state = state.replace(tx=tx, opt_state=tx.init(state.params))
  twin = torch_reference.from_flax_module(model, IN_CHANNELS)
  torch_reference.load_flax(twin, {"params": state.params, "batch_stats": state.batch_stats})
  return model, state, twin


def _relative_error(expected, actual) -> float:
  return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("case", CASES)
def test_ported_weights_round_trip_and_give_the_same_forward(case):
  model, state, twin = _twins(case, optax.sgd(LEARNING_RATE))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  back = torch_reference.state_dict_to_flax(twin.state_dict())
  for collection, value in variables.items():
    original = traverse_util.flatten_dict(jax.device_get(value))
    ported = traverse_util.flatten_dict(back[collection])
    assert original.keys() == ported.keys()
    for path, leaf in original.items():
      np.testing.assert_array_equal(leaf, ported[path], err_msg=str(path))

  images = next(_batches(1))["image"]
  for train in (False, True):
    twin.train(train)
    apply = jax.jit(functools.partial(model.apply, train=train,
                                      mutable=["batch_stats"] if train else False))
    expected = apply(variables, steps.normalize_images(images))
    expected = np.asarray(expected[0] if train else expected)
    with torch.no_grad():
      actual = twin(_to_nchw(images) / 127.5 - 1.0).permute(0, 2, 3, 1).numpy()
    assert actual.shape == expected.shape == (2, HEIGHT, WIDTH, 1)
    assert _relative_error(expected, actual) < 1e-4, (train, _relative_error(expected, actual))


def _track_flax_variances(twin):
  """Hooks that keep the running variance the way flax does (biased batch variance)."""
  tracked = {}

  def hook(name, module, inputs):
    if module.training:
      variance = inputs[0].detach().var(dim=(0, 2, 3), unbiased=False)
      start = tracked.get(name, module.running_var.detach().clone())
      tracked[name] = 0.9 * start + 0.1 * variance

  for name, module in twin.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.register_forward_pre_hook(functools.partial(hook, name))
  return tracked


def _torch_steps(twin, optimizer, batches):
  twin.train()
  for batch in batches:
    optimizer.zero_grad()
    logits = twin(_to_nchw(batch["image"]) / 127.5 - 1.0)
    targets = torch.from_numpy(batch["mask"] > 0).float()[:, None]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).backward()
    optimizer.step()


# Adam's eps is raised from 1e-8 to 1e-3 here: with a tiny eps the first Adam step is
# lr * sign(g), so an element whose gradient is at rounding level flips by 2 * lr on one side
# (e.g. a VALID up-sampling bias, whose effect the next BatchNorm cancels exactly). That is
# optimizer conditioning, not a port mismatch; the update rule being compared is the same.
OPTIMIZERS = {
    "sgd": (lambda: optax.sgd(LEARNING_RATE, momentum=0.9),
            lambda params: torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9)),
    "adam": (lambda: optax.adam(LEARNING_RATE, eps=1e-3),
             lambda params: torch.optim.Adam(params, lr=LEARNING_RATE, eps=1e-3)),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("case", CASES)
def test_three_training_steps_stay_in_step(case, optimizer):
  make_tx, make_torch_optimizer = OPTIMIZERS[optimizer]
  _, state, twin = _twins(case, make_tx())
  batches = list(_batches(3))
  train_step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce,
                                         ignore_index=None))
  # LLVM -O0 halves the compile time of this tiny step; the HLO (and float32 maths) is the same.
  train_step = train_step.lower(state, batches[0]).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  for batch in batches:
    state, _ = train_step(state, batch)
  flax_variances = _track_flax_variances(twin)
  _torch_steps(twin, make_torch_optimizer(twin.parameters()), _batches(3))

  ported = torch_reference.state_dict_to_flax(twin.state_dict())
  params = traverse_util.flatten_dict(jax.device_get(state.params))
  for path, value in traverse_util.flatten_dict(ported["params"]).items():
    np.testing.assert_allclose(value, params[path], rtol=1e-4, atol=2e-5, err_msg=str(path))
  stats = traverse_util.flatten_dict(jax.device_get(state.batch_stats))
  for path, value in traverse_util.flatten_dict(ported["batch_stats"]).items():
    if path[-1] == "var":  # torch's running_var uses the unbiased variance, flax's the biased.
      assert np.all(value >= stats[path] - 1e-6), path
      value = flax_variances[".".join(path[:-1])].numpy()
    np.testing.assert_allclose(value, stats[path], rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_the_twin_refuses_what_it_does_not_mirror():
  with pytest.raises(ValueError, match="does not mirror {'block': 'residual'}"):
    torch_reference.from_flax_module(UNet(features=4, depth=2, block="residual"), IN_CHANNELS)
