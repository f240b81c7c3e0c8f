"""glibc malloc settings that keep freed host memory for reuse instead of returning it.

XLA:CPU allocates every intermediate buffer of a step with malloc and frees it after use.
glibc serves blocks over its mmap threshold (at most 32 MiB) with a fresh mmap, and worker
threads get their own arenas whose tops are trimmed back to the kernel, so a large step
page-faults through gigabytes of zero-filled memory every time: on the 2-core CPU, the TGS
U-Net (16 -> 64 channels, 128x128, batch 64) spent 2.7 s of its 4.0 s step in the kernel with
1.25 M page faults per step. One arena fed from the heap, never trimmed, reuses the same pages
(benchmarks/results/*/tgs.md has the measured speed-up, `jax_fp32_glibc_malloc` the before).

The cost: memory freed by the process stays mapped, so RSS stays at its peak, which is what a
training process needs again at its next step anyway; and one arena serialises malloc across
threads, which costs the multi-threaded input pipeline a little. So by default the settings
apply only where JAX computes on the CPU (no GPU/TPU plugin installed, or JAX_PLATFORMS=cpu);
UNET_JAX_MALLOC=tuned applies them anyway, UNET_JAX_MALLOC=system never. Settings apply to allocations made after the call, and a thread keeps the
arena it first used, so call this before JAX (or PyTorch) creates its thread pools: before the
first computation.
"""

import ctypes
import ctypes.util
import importlib.util
import os

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    (_M_ARENA_MAX, 1),  # All threads share the main arena, which grows with brk.
    (_M_MMAP_MAX, 0),  # No block is served by its own mmap (nor unmapped when freed).
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # Never give the top of the heap back to the kernel.
    (_M_TOP_PAD, 256 << 20),  # Grow the heap in 256 MiB steps: fewer brk calls.
)
_applied = None


def keep_freed_memory() -> bool:
  """Applies the settings once per process; True if glibc accepted them all.

  False (and nothing changed) off glibc, with an accelerator, or with UNET_JAX_MALLOC=system.
  """
  global _applied
  if _applied is None:
    _applied = _apply()
  return _applied


def computes_on_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without starting a JAX backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  # GPU plugins live in the jax_plugins namespace package; TPUs need libtpu.
  return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def _apply() -> bool:
  setting = os.environ.get("UNET_JAX_MALLOC", "").lower()
  if setting == "system" or (setting != "tuned" and not computes_on_cpu()):
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):  # Not glibc (macOS, musl builds without it).
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
