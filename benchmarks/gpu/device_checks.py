"""Checks that matter on an accelerator, run in one process on its default device.

Each check returns {'passed': bool, ...numbers...}; one that raises is recorded as failed
with its error, and the others still run (benchmarks/gpu/gpu_check.py collects them):
- conv_impl_auto: config.model.conv_impl='auto' resolves to XLA off the CPU (oneDNN only on
  the CPU backend), and the lowered train step holds none of the native CPU kernels' calls;
- finite_train_step: one jitted train step per compute dtype gives a finite loss and
  gradient norm, applies its update and skips nothing;
- parity_*: the Flax U-Net and its PyTorch twin (benchmarks/torch_reference) from the same
  weights, both on this machine's device. In fp32 with TF32 off on both sides the outputs
  agree to 1e-4 (max error over max value, tests/test_parity.py's measure), and after each
  of three Adam steps JAX's parameters are as close to the twin's float64 ones as the twin's
  fp32 parameters are; with each framework's default precision (TF32 convs
  on Ampere and newer) and in bf16 (JAX bf16 compute, torch autocast), the relative L2 error
  ||jax - torch|| / ||torch|| is recorded against looser bounds.
"""

import functools
import os
import traceback

import numpy as np

# Relative error bounds: fp32 as tests/test_parity.py; TF32 and bf16 round operands to 10 and
# 7 mantissa bits in every layer, so only gross errors (layout, a wrong port) exceed these.
FP32_MAX_ERROR = 1e-4
# Three fp32 Adam steps, each framework against float64: JAX within 2x of torch's own error.
TRAIN_STEPS_SLACK, TRAIN_STEPS_FLOOR = 2.0, 1e-5
TF32_L2_ERROR = 1e-2
BF16_L2_ERROR = 5e-2
ADAM = {"learning_rate": 1e-2, "eps": 1e-3}  # tests/test_parity.py's settings.


def _shape(tiny: bool) -> dict:
  """The U-Net and batch the checks use: small, but deep enough to go through every block."""
  if tiny:
    return {"features": 4, "depth": 2, "size": 32, "batch": 2}
  return {"features": 16, "depth": 3, "size": 96, "batch": 4}


def _batches(shape, count: int, seed: int = 0):
  """Fresh random uint8-range images and binary masks, NHWC with 3 channels."""
  rng = np.random.default_rng(seed)
  size, batch = shape["size"], shape["batch"]
  return [{"image": rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32),
           "mask": (rng.uniform(size=(batch, size, size)) > 0.5).astype(np.uint8)}
          for _ in range(count)]


def device_info() -> dict:
  """The default JAX device and torch's view of CUDA."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  info = {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
          "jax_device_kind": device.device_kind,
          "compute_capability": getattr(device, "compute_capability", None),
          "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
          "torch_cuda": torch.version.cuda, "torch_cuda_available": torch.cuda.is_available(),
          "torch_cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
          "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
          "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
  if torch.cuda.is_available():
    info["torch_device"] = torch.cuda.get_device_name()
  return info


def check_conv_impl_auto(shape) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from unet_jax import losses, steps  # pylint: disable=import-outside-toplevel
  from unet_jax.models import UNet  # pylint: disable=import-outside-toplevel
  from unet_jax.ops import library  # pylint: disable=import-outside-toplevel
  backend = jax.default_backend()
  native = library.unavailable_reason() is None
  expected = "onednn" if backend == "cpu" and native else "xla"
  resolved = library.resolve("auto")
  model = UNet(num_classes=1, features=shape["features"], depth=shape["depth"],
               conv_impl="auto")
  batch = _batches(shape, 1)[0]
  # Shapes are all the lowering needs: no initialisation runs.
  state = jax.eval_shape(lambda: steps.create_train_state(model, optax.adam(1e-3),
                                                          batch["image"][:1], 0))
  step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce,
                                   ignore_index=None))
  native_calls = step.lower(state, batch).as_text().count("unet_conv_forward")
  return {"passed": resolved == expected and (native_calls > 0) == (expected == "onednn"),
          "backend": backend, "resolved": resolved, "expected": expected,
          "native_conv_calls_in_step": native_calls}


def check_finite_train_step(shape) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import losses, steps  # pylint: disable=import-outside-toplevel
  result = {"passed": True}
  batch = jax.device_put(_batches(shape, 1, seed=1)[0])
  for dtype_name in ("float32", "bfloat16"):
    state = _initial_state(shape, dtype_name)
    before = np.asarray(jax.tree.leaves(state.params)[0])
    step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.bce_dice,
                                     ignore_index=None))
    state, metrics = step(state, batch)
    metrics = jax.device_get(metrics)
    moved = float(np.max(np.abs(np.asarray(jax.tree.leaves(state.params)[0]) - before)))
    ok = (bool(np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])) and
          metrics["grad_norm"] > 0 and int(metrics["nonfinite_steps"]) == 0 and moved > 0)
    result[dtype_name] = {"loss": float(metrics["loss"]),
                          "grad_norm": float(metrics["grad_norm"]),
                          "nonfinite_steps": int(metrics["nonfinite_steps"]),
                          "max_param_change": moved, "passed": ok}
    result["passed"] &= ok
  return result


def _torch_device():
  import torch  # pylint: disable=import-outside-toplevel
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _set_torch_tf32(enabled: bool) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  torch.backends.cudnn.allow_tf32 = enabled
  torch.backends.cuda.matmul.allow_tf32 = enabled


def _model(shape, dtype_name: str):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from unet_jax.models import UNet  # pylint: disable=import-outside-toplevel
  return UNet(num_classes=1, features=shape["features"], depth=shape["depth"],
              dtype=jnp.dtype(dtype_name))


@functools.lru_cache(maxsize=None)
def _initial_variables(features: int, depth: int, size: int):
  """One jitted initialisation (Adam state included) shared by every check; the compute
  dtype does not change the initial parameters."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from unet_jax import steps  # pylint: disable=import-outside-toplevel
  model = _model({"features": features, "depth": depth}, "float32")
  sample = _batches({"size": size, "batch": 1}, 1, seed=99)[0]["image"]
  tx = optax.adam(ADAM["learning_rate"], eps=ADAM["eps"])
  return jax.jit(lambda images: steps.create_train_state(model, tx, images, 0))(sample)


def _initial_state(shape, dtype_name: str):
  """The shared initial TrainState, applying the U-Net in `dtype_name`."""
  state = _initial_variables(shape["features"], shape["depth"], shape["size"])
  return state.replace(apply_fn=_model(shape, dtype_name).apply)


def _twins(shape, dtype_name="float32"):
  """The Flax U-Net, its initial TrainState (Adam) and the torch twin on the device."""
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  model = _model(shape, dtype_name)
  state = _initial_state(shape, dtype_name)
  twin = torch_reference.from_flax_module(model, 3)
  torch_reference.load_flax(twin, {"params": state.params, "batch_stats": state.batch_stats})
  return model, state, twin.to(_torch_device())


def _to_torch(images):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(images).permute(0, 3, 1, 2).to(_torch_device()) / 127.5 - 1.0


def _forward_errors(model, state, twin, images, autocast=False):
  """(max error / max value, relative L2 error) of the twin's logits, eval and train mode."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from unet_jax import steps  # pylint: disable=import-outside-toplevel
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def both_modes(variables, images):  # One compilation for eval and train mode.
    images = steps.normalize_images(images)
    return (model.apply(variables, images, train=False),
            model.apply(variables, images, train=True, mutable=["batch_stats"])[0])

  outputs = jax.jit(both_modes)(variables, images)
  errors = {}
  for train in (False, True):
    expected = np.asarray(outputs[int(train)], np.float64)
    twin.train(train)
    with torch.no_grad(), torch.autocast(_torch_device().type, torch.bfloat16,
                                         enabled=autocast):
      actual = twin(_to_torch(images)).float().permute(0, 2, 3, 1).cpu().numpy()
    errors["train" if train else "eval"] = {
        "max_error": float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected))),
        "l2_error": float(np.linalg.norm(expected - actual) / np.linalg.norm(actual))}
  return errors


def check_parity_fp32(shape) -> dict:
  """fp32 on both sides, TF32 off: JAX at 'highest' precision, torch with allow_tf32 False."""
  import jax  # pylint: disable=import-outside-toplevel
  _set_torch_tf32(False)
  try:
    with jax.default_matmul_precision("highest"):
      model, state, twin = _twins(shape)
      errors = _forward_errors(model, state, twin, _batches(shape, 1)[0]["image"])
  finally:
    _set_torch_tf32(True)
  worst = max(e["max_error"] for e in errors.values())
  return {"passed": worst < FP32_MAX_ERROR, "bound": FP32_MAX_ERROR, **errors}


def _torch_train(twin, batches, dtype) -> list:
  """Adam steps of the twin in `dtype`; its parameters (Flax layout, float64) after each."""
  import torch  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  optimizer = torch.optim.Adam(twin.parameters(), lr=ADAM["learning_rate"], eps=ADAM["eps"])
  twin.train()
  after = []
  for batch in batches:
    optimizer.zero_grad()
    targets = torch.from_numpy(batch["mask"] > 0)[:, None].to(_torch_device(), dtype)
    torch.nn.functional.binary_cross_entropy_with_logits(
        twin(_to_torch(batch["image"]).to(dtype)), targets).backward()
    optimizer.step()
    after.append(traverse_util.flatten_dict(torch_reference.state_dict_to_flax(
        twin.state_dict(), dtype=np.float64)["params"]))
  return after


def check_parity_train_steps(shape) -> dict:
  """Three Adam steps in fp32 (TF32 off) on both sides, each against the twin in float64.

  The frameworks sum in different orders, and a BatchNorm bias's gradient is a sum that
  nearly cancels, so fp32 parameters drift apart after a few steps even where both are right
  (1e-3 relative after one step, 3e-2 after three at this shape, on the CPU as on the GPU).
  So each is measured against float64 (||p - p64|| / ||p64 - p0|| over every parameter):
  JAX's fp32 step must stay as close to it as PyTorch's own fp32 step, within 2x.
  """
  import copy  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  from unet_jax import losses, steps  # pylint: disable=import-outside-toplevel
  batches = _batches(shape, 3, seed=2)
  _set_torch_tf32(False)
  try:
    with jax.default_matmul_precision("highest"):
      _, state, twin = _twins(shape)
      initial = traverse_util.flatten_dict(jax.device_get(state.params))
      step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce,
                                       ignore_index=None))
      jax_after = []
      for batch in batches:
        state, _ = step(state, batch)
        jax_after.append(traverse_util.flatten_dict(jax.device_get(state.params)))
    reference = _torch_train(copy.deepcopy(twin).double(), batches, torch.float64)
    torch_after = _torch_train(twin, batches, torch.float32)
  finally:
    _set_torch_tf32(True)

  def error(params, exact):
    moved = sum(np.sum((exact[k] - initial[k]) ** 2) for k in exact)
    return float(np.sqrt(sum(np.sum((np.asarray(params[k], np.float64) - exact[k]) ** 2)
                             for k in exact) / moved))

  jax_errors = [error(p, exact) for p, exact in zip(jax_after, reference)]
  torch_errors = [error(p, exact) for p, exact in zip(torch_after, reference)]
  passed = all(j <= TRAIN_STEPS_SLACK * t + TRAIN_STEPS_FLOOR
               for j, t in zip(jax_errors, torch_errors))
  return {"passed": passed, "bound": f"jax <= {TRAIN_STEPS_SLACK} x torch + "
                                     f"{TRAIN_STEPS_FLOOR:g}, each step",
          "jax_fp32_vs_float64": jax_errors, "torch_fp32_vs_float64": torch_errors,
          "jax_vs_torch_fp32": error(jax_after[-1], torch_after[-1]), "steps": len(batches)}


def check_parity_default_precision(shape) -> dict:
  """Each framework's own default: TF32 convolutions on Ampere and newer GPUs."""
  model, state, twin = _twins(shape)
  errors = _forward_errors(model, state, twin, _batches(shape, 1)[0]["image"])
  worst = max(e["l2_error"] for e in errors.values())
  return {"passed": worst < TF32_L2_ERROR, "bound": TF32_L2_ERROR, **errors}


def check_parity_bf16(shape) -> dict:
  """JAX bf16 compute (params fp32) against torch autocast bf16, the same weights."""
  model, state, twin = _twins(shape, "bfloat16")
  errors = _forward_errors(model, state, twin, _batches(shape, 1)[0]["image"], autocast=True)
  worst = max(e["l2_error"] for e in errors.values())
  return {"passed": worst < BF16_L2_ERROR, "bound": BF16_L2_ERROR, **errors}


CHECKS = {
    "conv_impl_auto": check_conv_impl_auto,
    "finite_train_step": check_finite_train_step,
    "parity_fp32": check_parity_fp32,
    "parity_train_steps": check_parity_train_steps,
    "parity_default_precision": check_parity_default_precision,
    "parity_bf16": check_parity_bf16,
}


def run(tiny: bool, log=print) -> dict:
  """Every check on the default device; {'device': ..., 'checks': {name: result}}."""
  # JAX and torch share the GPU in this process: JAX must not take 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  shape = _shape(tiny)
  results = {}
  for name, check in CHECKS.items():
    try:
      results[name] = check(shape)
    except Exception:  # pylint: disable=broad-except
      text = traceback.format_exc(limit=6)
      results[name] = {"passed": False, "error": text.strip().splitlines()[-1], "traceback": text}
    log(f"  check {name}: {'pass' if results[name]['passed'] else 'FAIL'}")
  return {"device": device_info(), "shape": shape, "checks": results}
