"""The exported StableHLO artifact reloads and reproduces the model within 1e-5."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, tiny_config
from unet_jax import export, inference, steps, train


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("export_run")
  train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2), workdir)
  return workdir


def test_export_reloads_and_matches_for_several_batch_sizes(trained_workdir, tmp_path):
  path = tmp_path / "model.stablehlo"
  difference = export.export(trained_workdir, path)
  assert difference <= 1e-5
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  trained = export.in_float32(inference.load(trained_workdir))
  for batch in (1, 5):  # The batch dimension is symbolic: one artifact, any batch size.
    images = np.random.default_rng(batch).uniform(0, 255, (batch, 16, 16, 3)).astype(np.float32)
    expected = steps.predict_probabilities(trained.state, jnp.asarray(images))
    np.testing.assert_allclose(exported.call(images), expected, atol=1e-5)


def test_export_cli_writes_the_file_and_fails_clearly_without_checkpoints(trained_workdir,
                                                                          tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ok = subprocess.run([sys.executable, "-m", "unet_jax.export", f"--workdir={trained_workdir}",
                       f"--output={tmp_path / 'm.stablehlo'}"], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert (tmp_path / "m.stablehlo").stat().st_size > 1000
  empty = tmp_path / "empty_run"
  empty.mkdir()
  bad = subprocess.run([sys.executable, "-m", "unet_jax.export", f"--workdir={empty}",
                        f"--output={tmp_path / 'x.stablehlo'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 2
  assert [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert not (tmp_path / "x.stablehlo").exists()


def test_a_bfloat16_run_exports_a_float32_model(tmp_path):
  """bf16 compute is a training choice: the artifact computes in float32 from the same weights."""
  workdir = tmp_path / "bf16_run"
  train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2,
                                       **{"model.dtype": "bfloat16"}), workdir)
  path = tmp_path / "model.stablehlo"
  assert export.export(workdir, path) <= 1e-5
  trained = inference.load(workdir)
  assert trained.state.apply_fn.__self__.dtype == jnp.bfloat16
  images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  exported = jax.export.deserialize(bytearray(path.read_bytes())).call(images)
  float32 = steps.predict_probabilities(export.in_float32(trained).state, jnp.asarray(images))
  bfloat16 = steps.predict_probabilities(trained.state, jnp.asarray(images))
  np.testing.assert_allclose(exported, float32, atol=1e-5)
  assert np.max(np.abs(np.asarray(exported) - np.asarray(bfloat16))) > 1e-5
