"""The time-to-quality benchmark: its torch loss twin, its summary maths, and the script run
end to end on the TGS samples for a few seconds per side (never a timed test)."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests import _data_samples
from tests.conftest import REPO, shared_data_dir
from unet_jax import losses

torch = pytest.importorskip("torch")
torch_losses = pytest.importorskip("benchmarks.torch_losses")
from benchmarks import machine  # pylint: disable=wrong-import-position
from benchmarks.quality import quality_summary

SCRIPT = REPO / "benchmarks" / "quality" / "time_to_quality.py"


@pytest.mark.parametrize("name", sorted(torch_losses.LOSSES))
def test_torch_loss_equals_the_jax_loss(name):
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 20, 24, 1)).astype(np.float32)
  labels = (rng.uniform(size=(3, 20, 24)) > 0.6).astype(np.uint8)
  weights = rng.uniform(0, 2, (3, 20, 24)).astype(np.float32) * (rng.uniform(size=(3, 20, 24)) > 0.2)
  expected = losses.get_loss(name)(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  actual = torch_losses.get_loss(name)(torch.from_numpy(logits).permute(0, 3, 1, 2),
                                       torch.from_numpy(labels), torch.from_numpy(weights))
  np.testing.assert_allclose(actual.item(), float(expected), rtol=1e-5)


def test_torch_pixel_weights_match_the_project():
  labels = np.array([[[0, 1, 11], [11, 2, 0]]], np.uint8)
  extra = np.full(labels.shape, 0.5, np.float32)
  expected = losses.pixel_weights(jnp.asarray(labels), 11) * extra
  actual = torch_losses.pixel_weights(torch.from_numpy(labels), 11, extra)
  np.testing.assert_array_equal(actual.numpy(), np.asarray(expected))


def _curve(*points):
  return [{"seconds": s, "steps": n, "iou": v} for s, n, v in points]


def test_time_to_reach_interpolates_between_evaluations():
  curve = _curve((0, 0, 0.1), (10, 5, 0.5), (20, 10, 0.7), (30, 15, 0.6))
  assert quality_summary.time_to_reach(curve, 0.6) == pytest.approx(15.0)
  assert quality_summary.time_to_reach(curve, 0.05) == 0
  assert quality_summary.time_to_reach(curve, 0.8) is None


def test_per_step_gap_compares_at_common_step_counts():
  a = _curve((0, 0, 0.0), (1, 10, 0.5), (2, 20, 0.6))
  b = _curve((0, 0, 0.0), (1, 4, 0.4), (2, 8, 0.3))  # Shorter: compared up to step 8.
  gap = quality_summary.max_gap_per_step(a, b)
  assert gap["up_to_step"] == 8 and gap["steps_compared"] == 2  # Steps 4 and 8, not 0.
  assert gap["max"] == pytest.approx(0.4 - 0.2) and gap["at_step"] == 4  # a: 0.2 at step 4.


def test_per_step_gap_leaves_out_the_untrained_start():
  a = _curve((0, 0, 0.9), (1, 10, 0.5))
  b = _curve((0, 0, 0.0), (1, 10, 0.45))  # Another seed's initial weights: 0.9 apart.
  assert quality_summary.max_gap_per_step(a, b)["max"] == pytest.approx(0.05)
  assert quality_summary.max_gap_per_step(a, _curve((0, 0, 0.0))) is None


@pytest.fixture(scope="module")
def tgs_data_dir(tmp_path_factory):
  from unet_jax.data import prepare  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("ttq_tgs")
  zip_dir, _ = _data_samples.tgs_layouts(shared_data_dir("tgs"), root, count=50)
  prepare.prepare("tgs", zip_dir, root / "tfds")
  return root / "tfds"


def test_script_end_to_end_on_tiny_settings(tgs_data_dir, tmp_path):
  """Tiny model, 2 s per run, JAX then torch seeds 0 and 1, through the command line."""
  tiny = ["--config.model.features=4", "--config.model.depth=2", "--config.batch_size=4",
          "--config.eval_batch_size=8", "--config.num_train_steps=400",
          "--config.warmup_steps=5", "--config.compilation_cache_dir="]
  command = [sys.executable, str(SCRIPT), f"--config.data_dir={tgs_data_dir}", *tiny,
             "--budget_s=2", "--evals=2", "--seeds=0,1", f"--out={tmp_path}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  directory = tmp_path / machine.detect_device()["slug"]
  stem = "time_to_quality_tgs"
  assert {p.name for p in directory.iterdir()} == {f"{stem}.{s}" for s in ("json", "md", "png")}
  data = json.loads((directory / f"{stem}.json").read_text())

  assert {"schema_version", "config", "protocol", "device", "environment", "runs",
          "summary"} <= data.keys()
  assert "results" not in data  # report.readme_block skips this report.
  assert [r["name"] for r in data["runs"]] == ["jax", "torch_seed0", "torch_seed1"]
  for run in data["runs"]:
    assert run["status"] == "ok", run.get("traceback")
    points = run["points"]
    assert len(points) >= 2 and points[0]["steps"] == 0 and points[-1]["steps"] > 0
    assert [p["steps"] for p in points] == sorted({p["steps"] for p in points})
    assert points[-1]["seconds"] >= 2.0 or points[-1]["steps"] == 400
    for point in points:
      assert {"seconds", "steps", "iou", "tgs_map", "loss", "eval_s"} <= point.keys()
      assert 0 <= point["iou"] <= 1 and 0 <= point["tgs_map"] <= 1 and point["eval_s"] > 0
  jax_start, torch_start = data["runs"][0]["points"][0], data["runs"][1]["points"][0]
  # Same ported weights, same scoring code (torch evaluates under autocast bf16).
  assert torch_start["loss"] == pytest.approx(jax_start["loss"], rel=1e-2)
  assert torch_start["iou"] == pytest.approx(jax_start["iou"], abs=0.01)

  summary = data["summary"]
  assert set(summary["runs"]) == {"jax", "torch_seed0", "torch_seed1"} and not summary["failed"]
  assert summary["target_iou"] == summary["torch_final_iou"]
  reached = summary["jax_reached_target"] and summary["jax_s_to_target"] > 0
  assert (summary["speedup"] is None) == (not reached or not summary["torch_improved"])
  for key in ("iou", "tgs_map"):
    assert summary[f"torch_seed_spread_{key}"]["max"] >= 0
    assert summary[f"per_step_max_diff_{key}"]["max"] >= 0
    assert isinstance(summary[f"per_step_within_spread_{key}"], bool)
  markdown = (directory / f"{stem}.md").read_text()
  assert "| JAX (project train) |" in markdown and "seed spread" in markdown
  assert (directory / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
