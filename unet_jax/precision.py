"""The compute dtype that depends on the hardware: config.model.dtype = 'auto'.

`compute_dtype` maps (platform, CPU features, kernels in use, requested dtype) to the dtype the
model computes in, logs the choice and why once, and leaves an explicit choice alone.
"""

import functools
import logging

import jax
import jax.numpy as jnp

from unet_jax.ops import library

DTYPES = ("auto", "float32", "bfloat16", "float16")
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 dot products
# (Cooper Lake, Zen 4/5) or AMX tiles (Sapphire Rapids and later). Without them oneDNN emulates
# bf16 and it is slower than float32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
  """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def auto_dtype(platform: str, conv_impl: str, flags=None, compute_capability=None):
  """(dtype name, reason) that 'auto' resolves to.

  bfloat16 where the hardware computes it natively: TPUs, NVIDIA GPUs of compute capability
  8.0 or newer (Ampere, Hopper, ...), and the CPU when the native oneDNN kernels run the step on
  a CPU with AVX512-BF16 or AMX. float32 elsewhere (XLA's own CPU convolutions gain nothing
  from bf16: tgs preset 13.9 vs 14.5 img/s fp32, benchmarks/results/cpu-amd-epyc-2c/tgs.md).
  """
  if platform == "tpu":
    return "bfloat16", "TPUs compute bfloat16 natively"
  if platform == "gpu":
    try:
      capability = float(compute_capability)
    except (TypeError, ValueError):  # ROCm names its chips (gfx90a), not measured here.
      return "float32", f"GPU {compute_capability!r} is not an NVIDIA compute capability"
    if capability >= 8.0:
      return "bfloat16", f"GPU compute capability {compute_capability} >= 8.0 has bf16 tensor cores"
    return "float32", f"GPU compute capability {compute_capability} < 8.0 has no bf16 tensor cores"
  if platform != "cpu":
    return "float32", f"platform {platform!r} is not known to compute bfloat16 natively"
  found = sorted(set(BF16_CPU_FLAGS) & set(cpu_flags() if flags is None else flags))
  if conv_impl != "onednn":
    return "float32", "XLA's CPU convolutions are no faster in bfloat16 (native kernels not used)"
  if not found:
    return "float32", "this CPU has neither AVX512-BF16 nor AMX (bfloat16 would be emulated)"
  return "bfloat16", f"the native oneDNN kernels and this CPU's {'/'.join(found)}"


def _compute_capability():
  device = jax.devices()[0]
  return getattr(device, "compute_capability", None)


@functools.lru_cache(maxsize=None)
def _resolve(requested: str, conv_impl: str) -> str:
  if requested != "auto":
    return requested
  platform = jax.default_backend()
  capability = _compute_capability() if platform == "gpu" else None
  impl = library.resolve(conv_impl) if platform == "cpu" else "xla"
  name, reason = auto_dtype(platform, impl, compute_capability=capability)
  logging.info("model.dtype=auto computes in %s: %s (set --config.model.dtype=float32 or "
               "bfloat16 to choose)", name, reason)
  return name


def compute_dtype(requested: str, conv_impl: str = "auto") -> jnp.dtype:
  """The compute dtype of `config.model.dtype` ('auto' resolved for this process, logged once)."""
  return jnp.dtype(_resolve(requested, conv_impl))
