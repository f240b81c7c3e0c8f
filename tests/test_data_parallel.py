"""Data parallelism is real: 1 device and 4 devices take the same steps to the same place."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, xla_flags
from unet_jax.ops import library


def _run_forced_devices(module: str, count: int, *args) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={count}"),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module", params=["xla", "onednn"])
def results(request):
  if request.param == "onednn" and library.unavailable_reason():
    pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
  proc = _run_forced_devices("tests._data_parallel_worker", 4, request.param)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {**json.loads(proc.stdout), "conv_impl": request.param}


def test_batch_is_split_over_four_devices(results):
  assert results["device_count"] == 4
  assert results["all"]["spec"] == ["data"]
  # Global batch 8 over 4 devices: each holds 2 rows of 16x16x3.
  assert results["all"]["shard_shapes"] == [[2, 16, 16, 3]] * 4
  assert results["one"]["shard_shapes"] == [[8, 16, 16, 3]]


def test_one_and_four_devices_give_the_same_losses_and_parameters(results):
  np.testing.assert_allclose(results["all"]["losses"], results["one"]["losses"], rtol=1e-5)
  # Parameters and BatchNorm statistics (global-batch statistics on both meshes).
  assert len(results["all"]["leaves"]) == len(results["one"]["leaves"])
  for four, one in zip(results["all"]["leaves"], results["one"]["leaves"]):
    # BatchNorm variance (E[x^2] - E[x]^2 in float32) rounds differently per partitioning.
    np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)


def test_native_kernels_partition_over_the_batch_without_gathering_activations(results):
  if results["conv_impl"] != "onednn":
    pytest.skip("the XLA path has no native calls")
  assert results["all"]["native_calls"] > 0  # The step really runs the oneDNN kernels.
  assert results["all"]["all_gathers"] == 0  # Each device convolves its own rows.
  assert results["all"]["all_reduces"] > 0  # Weight gradients and BatchNorm sums are added.


def test_batch_size_not_divisible_by_device_count_is_one_clear_line(tmp_path):
  proc = _run_forced_devices("unet_jax.main", 4, "--config=configs/synthetic.py",
                             f"--workdir={tmp_path / 'run'}", "--config.batch_size=6")
  assert proc.returncode == 2
  error_lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert error_lines == [
      "error: batch_size=6 is not divisible by the 4 devices; "
      "set --config.batch_size to a multiple of 4"]
  assert not (tmp_path / "run").exists()  # Refused before anything was written.
