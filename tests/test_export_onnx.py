"""The ONNX export reproduces the checkpoint in onnxruntime within 1e-4, for any batch size."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, tiny_config
from unet_jax import export, inference, steps, train
from unet_jax.errors import UserError

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install -e '.[onnx]'")
pytest.importorskip("jax2onnx", reason="pip install -e '.[onnx]'")

# One tiny run per architecture, BatchNorm statistics moved by one training step.
ARCHITECTURES = {
    "unet": {},  # SAME padding, transposed up-convolution computed as a matmul.
    "unet_squeeze_excitation": {"model.squeeze_excitation": True},  # configs/tgs.py's.
    "unet_concurrent_excitation": {"model.squeeze_excitation": True,
                                   "model.excitation": "concurrent"},  # scSE.
    "unet_resize_to": {"model.resize_to": (24, 20)},  # Input resized in, logits back out.
    # Not a multiple of 2**depth: mirrored up inside the model, cropped back (configs/tgs.py).
    "unet_mirrored_input": {"image_size": (13, 11), "model.squeeze_excitation": True},
    "unet_valid_bilinear_softmax": {"model.padding": "VALID", "model.upsample": "bilinear",
                                    "synthetic.multiclass": True, "num_classes": 5,
                                    "loss": "softmax_ce"},
    "resnet18_unet": {"model.arch": "resnet18_unet", "image_size": (32, 32)},
    "simple_encoder_decoder": {"model.arch": "simple_encoder_decoder"},  # nn.ConvTranspose.
}


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """workdir of `architecture`'s run, trained on first use."""
  workdirs = {}

  def get(architecture: str):
    if architecture not in workdirs:
      workdirs[architecture] = tmp_path_factory.mktemp(architecture)
      train.train_and_evaluate(tiny_config(num_train_steps=1, eval_every_steps=1,
                                           **ARCHITECTURES[architecture]),
                               workdirs[architecture])
    return workdirs[architecture]
  return get


def _run(path, images):
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(["probabilities"], {"images": images})[0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_onnx_matches_the_checkpoint_for_batches_of_1_and_3(architecture, trained_workdir,
                                                             tmp_path):
  workdir = trained_workdir(architecture)
  path = tmp_path / "model.onnx"
  assert export.export(workdir, path) <= 1e-4
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  assert session.get_inputs()[0].shape[0] == "batch"  # Symbolic: one file, any batch size.
  trained = export.in_float32(inference.load(workdir))
  for batch in (1, 3):
    images = np.random.default_rng(batch).uniform(
        0, 255, (batch, *trained.image_size, 3)).astype(np.float32)
    expected = steps.predict_probabilities(trained.state, jnp.asarray(images))
    actual = _run(path, images)
    assert actual.shape == (batch, *trained.image_size, trained.config.num_classes)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_format_follows_the_flag_then_the_suffix():
  assert export.output_format("m.onnx") == "onnx"
  assert export.output_format("m.stablehlo") == "stablehlo"
  assert export.output_format("m.onnx", "stablehlo") == "stablehlo"
  with pytest.raises(UserError, match="not one of stablehlo, onnx"):
    export.output_format("m.bin", "tflite")


def test_cli_writes_a_file_onnxruntime_runs(trained_workdir, tmp_path):
  path = tmp_path / "model.bin"
  ok = subprocess.run([sys.executable, "-m", "unet_jax.export",
                       f"--workdir={trained_workdir('unet')}",
                       "--format=onnx", f"--output={path}"], cwd=REPO,
                      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                      timeout=300, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  images = np.zeros((2, 16, 16, 3), np.float32)
  assert _run(path, images).shape == (2, 16, 16, 1)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]  # No temporary left.


def test_a_failed_check_leaves_the_existing_file_alone(trained_workdir, tmp_path,
                                                       monkeypatch):
  path = tmp_path / "model.onnx"
  path.write_bytes(b"a good model")
  monkeypatch.setitem(export.TOLERANCE, "onnx", -1.0)  # No difference passes.
  with pytest.raises(UserError, match="differs from the checkpoint"):
    export.export(trained_workdir("unet"), path)
  assert path.read_bytes() == b"a good model"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_missing_packages_are_one_line_naming_the_extra(trained_workdir, tmp_path,
                                                        monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` raises ImportError.
  with pytest.raises(UserError, match=r"pip install 'unet_jax\[onnx\]'"):
    export.export(trained_workdir("unet"), tmp_path / "model.onnx")
  assert not list(tmp_path.iterdir())
