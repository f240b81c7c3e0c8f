"""Multi-host training with jax.distributed, tested with real processes on 127.0.0.1:
2 processes x 2 CPU devices (gloo collectives) against 1 process x 4 devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from flax.traverse_util import flatten_dict
import pytest

from tests.conftest import REPO, metrics_by_step, restore_saved_state, xla_flags
from unet_jax import inference

HEARTBEAT_SECONDS = 10
# A surviving process must be gone this long after its peer died (heartbeat + shutdown).
EXIT_BOUND_SECONDS = 90


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))


def _command(workdir, *extra):
  # float32 whatever model.dtype='auto' picks here: the 1-vs-2-process checks are to float32
  # rounding (the all-reduce order differs), which bf16 activations would amplify.
  return [sys.executable, "-m", "unet_jax.main", "--config=tests/tiny_config.py",
          f"--workdir={workdir}", "--config.model.dtype=float32", *extra]


def _launch_two(workdir, *overrides):
  port = _free_port()
  return [subprocess.Popen(
      _command(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}", f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}",
               *overrides),
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def _wait_all(procs, timeout=400):
  outputs = [p.communicate(timeout=timeout) for p in procs]
  return [(p.returncode, err) for p, (_, err) in zip(procs, outputs)]


def _state(workdir, step):
  return restore_saved_state(workdir, step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  single = tmp_path_factory.mktemp("one_process_4_devices")
  proc = subprocess.run(_command(single), cwd=REPO, env=_env(4), capture_output=True,
                        text=True, timeout=400, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  double = tmp_path_factory.mktemp("two_processes_2_devices")
  results = _wait_all(_launch_two(double))
  for code, err in results:
    assert code == 0, err[-3000:]
  return single, double, results


def test_two_processes_log_that_the_global_batch_spans_four_devices(runs):
  _, _, results = runs
  assert "4 devices, global batch 8 (2 per device)" in results[0][1]


def test_loss_curve_and_parameters_match_one_process(runs):
  single, double, _ = runs
  one, two = metrics_by_step(single, "train"), metrics_by_step(double, "train")
  assert sorted(one) == sorted(two) == list(range(1, 13))
  np.testing.assert_allclose([two[s]["loss"] for s in one], [one[s]["loss"] for s in one],
                             rtol=1e-4)
  a = flatten_dict(_state(single, 12)["params"], sep="/")
  b = flatten_dict(_state(double, 12)["params"], sep="/")
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_evaluation_over_two_processes_equals_one_process(runs):
  single, double, _ = runs
  one, two = metrics_by_step(single, "val"), metrics_by_step(double, "val")
  assert sorted(one) == sorted(two) == [4, 8, 12]
  for step in one:
    for name in ("dice", "iou", "pixel_accuracy", "loss"):
      assert two[step][name] == pytest.approx(one[step][name], rel=1e-4, abs=1e-6)


def test_only_process_0_writes_logs_and_both_save_their_data_position(runs):
  _, double, _ = runs
  lines = (double / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 12 + 3  # One writer: no duplicated records.
  data_dir = double / "checkpoints" / "12" / "data"
  assert sorted(p.name for p in data_dir.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_killing_one_process_stops_the_other_and_both_resume(tmp_path):
  procs = _launch_two(tmp_path, "--config.num_train_steps=100000")
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "8").is_dir() and time.time() < deadline:
    time.sleep(0.2)
  assert (tmp_path / "checkpoints" / "8").is_dir(), "no checkpoint before the deadline"
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    _, survivor_stderr = procs[0].communicate(timeout=EXIT_BOUND_SECONDS)
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"process 0 still running {EXIT_BOUND_SECONDS} s after its peer was killed")
  procs[1].communicate()
  assert procs[0].returncode == 3
  errors = [l for l in survivor_stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "lost contact with the other processes" in errors[0]
  assert time.time() - killed_at < EXIT_BOUND_SECONDS
  latest = max(inference.saved_steps(tmp_path))
  results = _wait_all(_launch_two(tmp_path, f"--config.num_train_steps={latest + 4}"))
  for code, err in results:
    assert code == 0, err[-3000:]
  assert f"resuming from the checkpoint of step {latest}" in results[0][1]
  assert max(metrics_by_step(tmp_path, "val")) == latest + 4
