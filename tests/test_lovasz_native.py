"""The Lovasz losses' sort on the native CPU kernel equals XLA's sort, sharded or not."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import xla_flags
from unet_jax import losses
from unet_jax.ops import lovasz as lovasz_ops

REPO = pathlib.Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not lovasz_ops.available(),
                                  reason="the native CPU kernels are not built here")


def _numpy_weights(errors, targets):
  """Berman et al.'s Alg. 1 for one row, in NumPy: sort (stable), Jaccard steps, scatter back."""
  order = np.argsort(-errors, kind="stable")
  sorted_targets = targets[order].astype(np.float64)
  total = sorted_targets.sum()
  jaccard = 1 - (total - np.cumsum(sorted_targets)) / (total + np.cumsum(1 - sorted_targets))
  weights = np.empty_like(errors)
  weights[order] = np.diff(jaccard, prepend=0.0)
  return weights


@needs_native
def test_pixel_weights_follow_the_rank_by_decreasing_error():
  rng = np.random.default_rng(0)
  errors = rng.normal(size=(3, 257)).astype(np.float32)
  errors[1, :40] = -np.inf  # Pixels that do not count: last, whatever their target.
  errors[2, 5:9] = errors[2, 4]  # Ties: broken by position, as a stable sort does.
  targets = (rng.random((3, 257)) < 0.4).astype(np.float32)
  targets[1, :40] = 0
  weights = np.asarray(jax.jit(lovasz_ops.pixel_weights)(errors, targets))
  expected = np.stack([_numpy_weights(e, t) for e, t in zip(errors, targets)])
  np.testing.assert_allclose(weights, expected, atol=1e-6)
  assert np.sum(weights[0]) == pytest.approx(1.0, abs=1e-5)  # Jaccard loss of all wrong.


def _case(seed, shape, channels, empty_images=0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(0, 2, shape + (channels,)), jnp.float32)
  labels = rng.integers(0, max(channels, 2), shape)
  labels[:empty_images] = 0
  weights = (rng.random(shape) > 0.2).astype(np.float32)
  return logits, jnp.asarray(labels), jnp.asarray(weights)


@needs_native
@pytest.mark.parametrize("loss, channels, kwargs", [
    (losses.lovasz_hinge, 1, {}), (losses.lovasz_hinge, 1, {"per_image": False}),
    (losses.lovasz_softmax, 4, {}), (losses.lovasz_softmax, 1, {})])
def test_native_and_xla_sorts_give_the_same_loss_and_gradient(loss, channels, kwargs):
  logits, labels, weights = _case(1, (4, 19, 23), channels, empty_images=1)
  results = {}
  for native in (False, True):
    fn = jax.jit(jax.value_and_grad(lambda l, n=native: loss(l, labels, weights, native=n,
                                                             **kwargs)))
    results[native] = fn(logits)
  (value_xla, grad_xla), (value_native, grad_native) = results[False], results[True]
  assert float(value_native) == pytest.approx(float(value_xla), rel=1e-5)
  assert float(jnp.max(jnp.abs(grad_xla))) > 0
  np.testing.assert_allclose(grad_native, grad_xla, atol=1e-6)


_SUBPROCESS = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from unet_jax import losses
    from unet_jax.ops import lovasz as lovasz_ops
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0, 2, (8, 16, 16, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, (8, 16, 16)))
    weights = jnp.ones((8, 16, 16), jnp.float32)
    step = jax.jit(jax.value_and_grad(lambda l: losses.lovasz_hinge(l, labels, weights)))
    one = step(logits)
    result = {"devices": len(jax.devices()), "native": lovasz_ops.available(),
              "loss": float(one[0])}
    if len(jax.devices()) > 1:
      mesh = Mesh(np.array(jax.devices()), ("batch",))
      sharded = jax.device_put(logits, NamedSharding(mesh, P("batch")))
      four = step(sharded)
      result.update(loss_sharded=float(four[0]),
                    all_gathers=step.lower(sharded).compile().as_text().count(" all-gather("),
                    grad_diff=float(jnp.max(jnp.abs(one[1] - four[1]))))
    print(json.dumps(result))
""")


def _run(env_extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  proc = subprocess.run([sys.executable, "-c", _SUBPROCESS], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_native
def test_sharded_over_four_devices_and_the_xla_fallback_agree():
  four = _run({"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4")})
  assert four["devices"] == 4 and four["native"] and four["all_gathers"] == 0
  assert four["loss_sharded"] == pytest.approx(four["loss"], rel=1e-6)
  assert four["grad_diff"] <= 1e-7
  fallback = _run({"UNET_JAX_DISABLE_NATIVE": "1"})
  assert not fallback["native"] and fallback["loss"] == pytest.approx(four["loss"], rel=1e-5)
