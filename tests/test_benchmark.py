"""The throughput benchmark, run for one tiny step on CPU: its report has the promised shape.

The benchmark itself is a script (benchmarks/step/throughput.py), never a timed test.
"""

import json
import time

import pytest

pytest.importorskip("torch")
throughput = pytest.importorskip("benchmarks.step.throughput")
from benchmarks import flops, machine  # pylint: disable=wrong-import-position
from benchmarks.step import report

RESULT_KEYS = {"variant", "framework", "label", "compute_dtype", "status", "compile_s",
               "first_step_s", "img_per_s", "step_ms_median", "achieved_gflops", "mfu",
               "peak_memory_mib", "peak_memory_method", "worker_info"}


def test_one_tiny_step_writes_json_markdown_and_chart(tmp_path):
  data = throughput.run("tiny", out_dir=tmp_path, warmup_steps=0, timed_steps=1, repeats=1,
                        variant_names=["jax_fp32", "torch_eager_cl"], quiet=True)
  slug = machine.detect_device()["slug"]
  directory = tmp_path / slug
  assert {p.name for p in directory.iterdir()} == {"tiny.json", "tiny.md", "tiny.png"}
  assert json.loads((directory / "tiny.json").read_text()) == json.loads(json.dumps(data))

  assert data["schema_version"] == throughput.SCHEMA_VERSION
  assert {"preset", "config", "device", "environment", "protocol", "flops", "peak", "results",
          "summary"} <= data.keys()
  assert data["device"]["slug"] == slug and data["device"]["platform"] in ("cpu", "gpu")
  assert len(data["environment"]["loadavg_start"]) == 3
  assert data["environment"]["versions"]["jax"] and data["environment"]["versions"]["torch"]
  assert data["protocol"]["timed_steps"] == 1 and data["protocol"]["repeats"] == 1
  assert data["flops"]["train_per_image"] > 0 and data["flops"]["xla_cost_analysis_per_image"] > 0
  assert data["peak"]["peak_gflops"]["fp32"] > 0

  assert [r["variant"] for r in data["results"]] == ["jax_fp32", "torch_eager_cl"]
  for result in data["results"]:
    assert result["status"] == "ok", result.get("traceback")
    assert RESULT_KEYS <= result.keys()
    assert result["img_per_s"]["min"] <= result["img_per_s"]["median"] <= result["img_per_s"]["max"]
    assert 0 < result["mfu"] < 1.5
  assert data["summary"]["best_torch"] == "torch_eager_cl"
  assert data["summary"]["ratio_jax_to_best_torch"] > 0

  markdown = (directory / "tiny.md").read_text()
  assert "| JAX fp32 (XLA kernels) |" in markdown and "**JAX / best PyTorch = " in markdown
  assert (directory / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "JAX fp32" in report.readme_block(tmp_path)


def test_flops_formula_counts_every_conv():
  # depth 1, SAME, 8x8, 1 -> 2 channels, transpose, 1 class, by hand (multiply-add = 2 FLOPs):
  encoder = 2 * 64 * 9 * (1 * 2 + 2 * 2)
  bottleneck = 2 * 16 * 9 * (2 * 4 + 4 * 4)
  up = 2 * 16 * 4 * 4 * 2
  decoder = 2 * 64 * 9 * (4 * 2 + 2 * 2)
  head = 2 * 64 * 2 * 1
  forward = encoder + bottleneck + up + decoder + head
  assert flops.forward_flops(8, 8, 1, 2, 1) == (forward, 2 * 64 * 9 * 2)
  assert flops.train_flops(8, 8, 1, 2, 1) == 3 * forward - 2 * 64 * 9 * 2


def test_device_slug_is_detected_and_path_safe():
  device = machine.detect_device()
  assert device["slug"].startswith(("cpu-", "gpu-"))
  assert device["slug"].replace("-", "").isalnum()
  assert machine.slugify("AMD EPYC 9B45 96-Core Processor") == "amd-epyc-9b45"
  # One model name, two instruction sets: an AVX2-only CPU's reports get their own folder.
  assert machine.isa_tag({"avx2", "fma"}) == "-avx2"
  assert machine.isa_tag({"avx2", "avx512f", "avx512_bf16"}) == machine.isa_tag(set()) == ""


def test_variants_past_the_deadline_are_reported_not_built(tmp_path):
  data = throughput.run("tiny", out_dir=tmp_path, warmup_steps=0, timed_steps=1, repeats=1,
                        variant_names=["jax_fp32", "torch_eager_cl"], quiet=True,
                        deadline=time.perf_counter() - 1, slug="budget")
  assert [r["status"] for r in data["results"]] == ["failed", "failed"]
  assert all(r["error"].startswith("not built") for r in data["results"])
  assert data["summary"]["ratio_jax_to_best_torch"] is None
  assert (tmp_path / "budget" / "tiny.png").read_bytes()[:4] == b"\x89PNG"  # No bars.


def test_gpu_presets_fill_the_gpu():
  classic = throughput.preset_spec("classic", "gpu")
  assert (classic["height"], classic["width"], classic["batch"]) == (256, 256, 32)
  assert throughput.preset_spec("carvana", "gpu")["height"] == 256
  assert machine.gpu_slug("NVIDIA H200") == "gpu-h200"


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match="unknown preset"):
    throughput.preset_spec("huge", "cpu")


def test_squeeze_excitation_benchmark_times_both_and_writes_its_report(tmp_path):
  from benchmarks.kernels import squeeze_excitation  # pylint: disable=import-outside-toplevel
  from unet_jax.ops import library  # pylint: disable=import-outside-toplevel
  if library.unavailable_reason():
    pytest.skip(f"native kernels: {library.unavailable_reason()}")
  assert squeeze_excitation.level_shapes(2, 128, 64, 16, 2) == [
      (2, 128, 64, 16), (2, 128, 64, 16), (2, 64, 32, 32), (2, 64, 32, 32), (2, 32, 16, 64)]
  assert squeeze_excitation.level_shapes(1, 101, 101, 16, 4)[::2] == [  # Mirrored to 112 first.
      (1, 112, 112, 16), (1, 56, 56, 32), (1, 28, 28, 64), (1, 14, 14, 128), (1, 7, 7, 256)]
  data = squeeze_excitation.run("tgs", tmp_path, repeats=1, batch=1)
  assert len(data["shapes"]) == 9 and data["shapes"][0] == (1, 112, 112, 16)
  for times in data["ms"].values():
    assert set(times) == {"xla", "onednn"} and all(0 < ms < 1e4 for ms in times.values())
  folder = tmp_path / data["device"]["slug"]
  assert "native speed-up" in (folder / "squeeze_excitation.md").read_text()
  assert json.loads((folder / "squeeze_excitation.json").read_text())["ms"] == data["ms"]
