"""The per-layer convolution benchmark on tiny shapes: its report's shape, and that the three
implementations it times compute the same convolution.

The benchmark itself is a script (benchmarks/kernels/conv_layers.py), never a timed test.
"""

import json

import numpy as np
import pytest

from tests.conftest import needs_onednn_bf16
from unet_jax.ops import library

conv_layers = pytest.importorskip("benchmarks.kernels.conv_layers")
pytestmark = pytest.mark.skipif(library.unavailable_reason() is not None,
                                reason=f"native kernels: {library.unavailable_reason()}")

LAYERS = (
    {"x": (2, 8, 8, 3), "w": (3, 3, 3, 4), "name": "first", "input_grad_count": 0},
    {"x": (2, 8, 8, 4), "w": (3, 3, 4, 4), "name": "twice", "count": 2},
    {"x": (2, 8, 8, 4), "w": (2, 2, 4, 8), "strides": (2, 2), "padding": ((0, 0), (0, 0)),
     "transposed": True, "name": "up"},
    {"x": (2, 8, 8, 4), "w": (1, 1, 4, 1), "padding": ((0, 0), (0, 0)), "name": "head"},
)


def _layers():
  return [conv_layers.layer_spec(**spec) for spec in LAYERS]


def _as_float(array):
  array = np.asarray(array)
  if array.dtype == np.uint16:  # bf16 bit patterns from the direct call.
    return (array.astype(np.uint32) << 16).view(np.float32)
  return array.astype(np.float32)


def test_tiny_run_writes_the_report(tmp_path):
  data = conv_layers.run("tiny", dtypes=("fp32", "bf16"), repeats=2, out_dir=tmp_path,
                         layers=_layers(), quiet=True)
  slug = data["device"]["slug"]
  names = {p.name for p in (tmp_path / slug).iterdir()}
  assert names == {"conv_layers_tiny.json", "conv_layers_tiny.md", "conv_layers_tiny.png"}
  assert json.loads((tmp_path / slug / "conv_layers_tiny.json").read_text()) == data
  assert {"schema_version", "benchmark", "preset", "model", "device", "environment",
          "protocol", "implementations", "layers", "totals"} <= data.keys()
  assert data["environment"]["host_malloc"] == "system"
  assert [layer["name"] for layer in data["layers"]] == ["first", "twice", "up", "head"]
  # bf16 is timed where oneDNN has bf16 convolutions, and said left out where it has none.
  timed = ["fp32", "bf16"] if library.bf16_convs_supported() else ["fp32"]
  assert data["protocol"]["dtypes"] == timed
  assert ("bf16" in data["protocol"]["left_out"]) == (timed == ["fp32"])
  for layer in data["layers"]:
    assert layer["flops"] == 2 * np.prod(layer["y"][:3]) * np.prod(layer["w"])
    for dtype in timed:
      for pass_name in conv_layers.PASSES:
        for impl in conv_layers.IMPLS:
          timing = layer["timings"][dtype][pass_name][impl]
          assert timing["seconds"] > 0 and timing["gflops"] > 0, (layer["name"], pass_name)
  for dtype in timed:
    total = data["totals"][dtype]
    assert all(total["gflops"][impl] > 0 for impl in conv_layers.IMPLS)
    assert total["ratio_onednn_jax_to_direct"] > 0 and total["ratio_onednn_jax_to_xla"] > 0
  # Train-step FLOPs: every pass of every layer by its count, less the first input gradient.
  forward = sum(layer["count"] * layer["flops"] for layer in data["layers"])
  assert data["totals"]["fp32"]["flops"] == 3 * forward - data["layers"][0]["flops"]
  markdown = (tmp_path / slug / "conv_layers_tiny.md").read_text()
  assert "oneDNN via JAX / direct = " in markdown and "| 3x3 2x8x8x4 -> 4 | 2 |" in markdown
  assert (tmp_path / slug / "conv_layers_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["twice", "up"])
def test_the_implementations_compute_the_same_passes(name):
  layer = next(layer for layer in _layers() if layer["name"] == name)
  arrays, host = conv_layers.make_arrays(layer, "fp32", seed=1)
  for pass_name in conv_layers.PASSES:
    calls = conv_layers.pass_callables(layer, "fp32", pass_name, arrays, host)
    outputs = {impl: _as_float(call()[1]).copy() for impl, call in calls.items()}
    expected = outputs["xla"]
    scale = np.abs(expected).max()
    for impl in ("onednn_jax", "onednn_direct"):
      assert outputs[impl].shape == expected.shape, (pass_name, impl)
      np.testing.assert_allclose(outputs[impl], expected, atol=1e-5 * scale, rtol=1e-4,
                                 err_msg=f"{name} {pass_name} {impl}")


# bf16 outputs: both round to 8 bits, Winograd's transforms add about as much again; float32:
# rounding of 24-bit sums (a wrong tap or tile is off by O(1)).
@pytest.mark.parametrize("dtype,tolerance", [pytest.param("bf16", 3e-2, marks=needs_onednn_bf16),
                                             ("fp32", 1e-5)])
def test_the_winograd_column_computes_the_passes(dtype, tolerance):
  layer = next(layer for layer in _layers() if layer["name"] == "twice")
  arrays, host = conv_layers.make_arrays(layer, dtype, seed=1)
  for pass_name in conv_layers.PASSES:
    calls = conv_layers.pass_callables(layer, dtype, pass_name, arrays, host)
    expected, got = (_as_float(calls[impl]()[1]).copy() for impl in ("onednn_jax",
                                                                     "winograd_jax"))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max(),
                               err_msg=pass_name)


def test_model_layers_cover_the_flops_formula():
  from benchmarks import flops  # pylint: disable=import-outside-toplevel
  from benchmarks.step import throughput
  layers = conv_layers.model_layers("tgs")
  spec = throughput.preset_spec("tgs", "cpu")
  forward, first = flops.forward_flops(spec["height"], spec["width"], spec["in_channels"],
                                       spec["features"], spec["depth"])
  # Every convolution but the 1x1 logit head, which runs as an XLA dot (ops.layers).
  head = 2 * spec["height"] * spec["width"] * spec["features"] * 1
  assert sum(layer["count"] * layer["flops"] for layer in layers) == (
      (forward - head) * spec["batch"])
  assert layers[0]["flops"] == first * spec["batch"] and layers[0]["input_grad_count"] == 0
  assert sum(layer["transposed"] for layer in layers) == spec["depth"]
