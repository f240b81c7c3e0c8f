"""What the benchmark ran on: detected device, slug, versions and thread settings."""

import importlib.metadata
import os
import platform
import re
import subprocess
import sys

# Dense peak TFLOP/s from the vendors' data sheets (SXM parts), for GPU MFU.
GPU_PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "bf16": 989.0},
    "H100": {"fp32": 67.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "matplotlib",
             "orbax-checkpoint", "grain", "tensorflow-datasets", "jax-cuda12-plugin",
             "jax-cuda13-plugin")


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def isa_tag(flags) -> str:
  """'-avx2' for an x86 CPU without AVX-512, else '': the same model name (a cloud's 'AMD EPYC')
  comes with and without AVX-512, and the kernels (and bf16) differ, so their reports must not
  share a folder."""
  return "-avx2" if "avx2" in flags and "avx512f" not in flags else ""


def usable_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def gpu_name() -> str | None:
  """The first NVIDIA GPU's name from nvidia-smi, or None on a machine without one."""
  try:
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
  return names[0] if names else None


def slugify(text: str) -> str:
  text = re.sub(r"\((r|tm)\)|\b(processor|cpu|\d+-core)\b", "", text.lower())
  return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def gpu_slug(name: str) -> str:
  """'NVIDIA H200' -> 'gpu-h200': the model, without the vendor every such GPU shares."""
  return "gpu-" + slugify(re.sub(r"\bnvidia\b", "", name, flags=re.IGNORECASE))


def detect_device() -> dict:
  """{'platform', 'name', 'slug', 'cores'}; the slug names benchmarks/results/<slug>/."""
  cores = usable_cores()
  name = gpu_name()
  if name:
    return {"platform": "gpu", "name": name, "slug": gpu_slug(name), "cores": cores}
  from unet_jax import precision  # pylint: disable=import-outside-toplevel  # Imports JAX.
  name = cpu_model()
  return {"platform": "cpu", "name": name,
          "slug": f"cpu-{slugify(name)}{isa_tag(precision.cpu_flags())}-{cores}c",
          "cores": cores}


def gpu_peak_tflops(name: str) -> dict | None:
  for key, peak in GPU_PEAK_TFLOPS.items():
    if key in name.upper():
      return peak
  return None


def versions() -> dict:
  found = {"python": sys.version.split()[0], "platform": platform.platform()}
  for package in _PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def environment() -> dict:
  """Settings that change the numbers: XLA / thread variables and the load average."""
  keys = ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
          "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")
  return {"env": {key: os.environ.get(key) for key in keys},
          "loadavg": list(os.getloadavg()), "cpu_model": cpu_model(),
          "usable_cores": usable_cores()}
