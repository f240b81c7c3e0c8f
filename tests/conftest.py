"""Shared fixtures: the real-data samples path and small configs."""

import os
import pathlib

import pytest

from configs import default as default_config

REPO = pathlib.Path(__file__).resolve().parents[1]

# The tests check what programs compute, not how fast: LLVM -O0 for XLA's CPU code halves the
# compile time that dominates most tests (a deep-supervision test 49 -> 11 s on an AVX2 EPYC).
# Results differ in the last bits of some operations, which training grows (the demo's 300
# steps: validation Dice 0.9813 at -O0, 0.9796 at the default); tests compare within tolerances
# or thresholds, never across the two flags. Set before any test starts JAX's backend;
# subprocesses inherit it. The demo test runs the README command with the default flags.
XLA_TEST_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAG}".strip()
# Tests and their subprocesses compile the same tiny programs again and again: the runs'
# persistent compilation cache keeps every one, not only those over train's 0.5 s (-8% on the
# subprocess-heavy files on the AVX2 EPYC).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# In-process tests too (not only those that run train_and_evaluate, which sets it): both
# xdist workers and every subprocess share one cache, the one configs/default.py names.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser(
    default_config.get_config().compilation_cache_dir))


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a subprocess: the suite's own flags plus `flags`."""
  return " ".join((os.environ.get("XLA_FLAGS", ""), *flags)).strip()


# One overridable path to the real samples (TGS, Carvana, CamVid in their original layouts).
SHARED_DATA = pathlib.Path(os.environ.get("UNET_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def _onednn_bf16_reason() -> str | None:
  from unet_jax.ops import library  # pylint: disable=import-outside-toplevel
  return library.bf16_unavailable_reason()


# For tests that call the native bf16 kernels themselves (models fall back to XLA there).
needs_onednn_bf16 = pytest.mark.skipif(_onednn_bf16_reason() is not None,
                                       reason=f"native bf16 kernels: {_onednn_bf16_reason()}")


def shared_data_dir(name: str) -> pathlib.Path:
  """../shared/data/<name>, or skip the test saying where the samples were looked for."""
  path = SHARED_DATA / name
  if not path.is_dir():
    pytest.skip(f"real {name} samples not found at {path} (set UNET_JAX_SHARED_DATA)")
  return path


@pytest.fixture
def tgs_dir():
  return shared_data_dir("tgs")


@pytest.fixture
def carvana_dir():
  return shared_data_dir("carvana")


@pytest.fixture
def camvid_dir():
  return shared_data_dir("camvid")


def tiny_config(**overrides):
  """The synthetic config shrunk to a 4-channel depth-2 U-Net on 16x16 images, a few steps."""
  from configs import synthetic  # pylint: disable=import-outside-toplevel
  config = synthetic.get_config()
  config.image_size = (16, 16)
  config.synthetic.num_train = 64
  config.synthetic.num_val = 16
  config.model.features = 4
  config.model.depth = 2
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.learning_rate = 3e-3  # Pinned: tests compare logged rates and config differences.
  config.warmup_steps = 50
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def init_variables(model, *inputs, seed: int = 0, **kwargs):
  """model.init(jax.random.key(seed), *inputs, **kwargs) as one compiled program: run op by op
  it compiles every small operation of the initialisers (a ResNet-18 U-Net: 19 s)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.jit(lambda *args: model.init(jax.random.key(seed), *args, **kwargs))(*inputs)


def random_images(shape=(2, 20, 24, 1), seed: int = 0):
  """Standard-normal NHWC images (20x24 by default: a depth-3 model pads them to 24x24)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.random.normal(jax.random.key(seed), shape)


def tiny_binary_step_inputs(config):
  """For a tiny binary `config`: its train state, a 4-image batch (two with a 5x5 square of
  foreground), and the model's training-mode logits and sown intermediates on that batch."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from unet_jax import models, optim, steps  # pylint: disable=import-outside-toplevel
  images = np.random.default_rng(0).integers(0, 255, (4, 16, 16), np.uint8)
  masks = np.zeros((4, 16, 16), np.int32)
  masks[:2, 4:9, 4:9] = 1
  state = steps.create_train_state(models.from_config(config), optim.make_optimizer(config, 4),
                                   images, seed=0)
  apply = jax.jit(lambda variables, x: state.apply_fn(variables, x, train=True,
                                                      mutable=["batch_stats", "intermediates"]))
  logits, updates = apply({"params": state.params, "batch_stats": state.batch_stats},
                          steps.normalize_images(images))
  return state, {"image": images, "mask": masks}, logits, updates.get("intermediates", {})


def restore_saved_state(workdir, step: int) -> dict:
  """A checkpoint's train state as numpy-backed arrays on this process's first device,
  whatever the device topology that saved it."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  state_dir = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(state_dir).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
  return checkpointer.restore(state_dir, target)


def metrics_by_step(workdir, split: str) -> dict:
  """workdir/metrics.jsonl's records of one split ('train' or 'val'), keyed by step."""
  from unet_jax import plots  # pylint: disable=import-outside-toplevel
  return {r["step"]: r for r in plots.read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
          if r["split"] == split}
