"""The training loop's host stays at most train.MAX_STEPS_IN_FLIGHT steps ahead of the device.

A deliberately slow step (the project's train step plus a chain of matmuls it depends on)
makes the device the bottleneck. Right after each dispatch, the steps dispatched but not
finished are those whose outputs are not ready yet (jax.Array.is_ready, no sync). (A host
callback that sleeps would not do: XLA:CPU runs such a step synchronously.)
Each loop runs in a process of its own with XLA:CPU's asynchronous dispatch (as GPUs dispatch):
the setting is fixed when JAX starts its CPU client, which another test may have done already.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp

from tests.conftest import REPO, tiny_config
from unet_jax import losses, steps, train

MATMULS = 24  # Of 512x512: ~6 GFLOP, tens of ms per step on a CPU, far above dispatch time.


class _NoStop:
  signal_name = None


class SlowStep:
  """The project's train step made slow; records the most steps in flight at any dispatch."""

  def __init__(self):
    self.outputs, self.max_in_flight = [], 0
    step = functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce, ignore_index=None)

    def slow(state, batch):
      state, metrics = step(state, batch)
      x = jnp.full((512, 512), 1e-3, jnp.float32) * metrics["loss"]
      x = jax.lax.fori_loop(0, MATMULS, lambda _, x: jnp.tanh(x @ x), x)
      return state, dict(metrics, loss=metrics["loss"] + 0.0 * jnp.sum(x))

    self.jitted = jax.jit(slow, donate_argnums=0)

  def __call__(self, state, batch):
    state, metrics = self.jitted(state, batch)  # Returns once queued (asynchronous dispatch).
    self.outputs.append(metrics["loss"])
    in_flight = sum(not loss.is_ready() for loss in self.outputs)
    self.max_in_flight = max(self.max_in_flight, in_flight)
    return state, metrics


def _run_slow_loop(workdir, bound: int) -> int:
  """The most steps in flight of a 12-step loop with the host bounded to `bound` of them."""
  config = tiny_config(num_train_steps=12, log_every_steps=12, eval_every_steps=12,
                       cpu_async_dispatch=True)
  train.MAX_STEPS_IN_FLIGHT = bound
  run, state, iterator, start = train._setup(config, workdir)  # pylint: disable=protected-access
  slow = SlowStep()
  run.train_step = slow
  train._train_loop(run, state, iterator, start, _NoStop())  # pylint: disable=protected-access
  run.finish()
  assert len(slow.outputs) == 12 and all(loss.is_ready() for loss in slow.outputs)
  return slow.max_in_flight


def _max_in_flight(tmp_path, bound: int) -> int:
  code = ("import sys; from tests import test_train_lookahead as t; "
          f"print('max_in_flight', t._run_slow_loop(sys.argv[1], {bound}))")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return int(proc.stdout.split("max_in_flight")[-1])


def test_steps_in_flight_never_exceed_the_bound(tmp_path):
  # The device always has the next step queued (the bound costs no throughput) but no more.
  assert _max_in_flight(tmp_path, train.MAX_STEPS_IN_FLIGHT) == train.MAX_STEPS_IN_FLIGHT


def test_without_the_bound_the_host_runs_ahead(tmp_path):
  """The check above can fail: unbounded, dispatch outruns the slow step."""
  assert _max_in_flight(tmp_path, 1000) > train.MAX_STEPS_IN_FLIGHT + 2
