"""glibc malloc settings that keep freed host memory for reuse instead of returning it.

XLA:CPU allocates every intermediate buffer of a step with malloc and frees it after use.
glibc serves blocks over its mmap threshold (at most 32 MiB) with a fresh mmap, and worker
threads get their own arenas whose tops are trimmed back to the kernel, so a step with large
buffers page-faults through gigabytes of zero-filled memory every time: the pyimagesearch TGS
recipe (VALID 16 -> 64 channels, 128x128, batch 64) spent 2.7 s of its 4.0 s CPU step in the
kernel, 1.25 M page faults per step. One arena fed from the heap and never trimmed reuses the
same pages: that run's 40 steps took 77 s instead of 172 s, with identical metrics.

It is the default on the CPU (`host_malloc='auto'`), measured in the committed step reports
(benchmarks/results/cpu-amd-epyc-2c/): JAX bf16 with the native kernels, tgs preset 79.1 ->
131.5 img/s for a peak of 1391 -> 1770 MiB; classic 9.90 -> 10.99 img/s, 1551 -> 1707 MiB. The
cost: nothing freed goes back to the kernel and the one heap fragments, so RSS can grow well
past glibc's peak (XLA's fp32 kernels on the tgs preset: 2813 -> 3293 MiB; the paper recipe at
batch 32 outgrew the 24 GiB machine by its third step, where glibc's default held ~10 GiB,
hence its config sets 'system'), and one arena serialises malloc across the input pipeline's
threads (why a host that feeds a GPU keeps 'system'). The settings apply to allocations made
afterwards and a thread keeps the arena it first used, so apply them before JAX (or PyTorch)
starts its thread pools: before the first computation.
"""

import ctypes
import ctypes.util

from unet_jax.errors import ConfigError

CHOICES = ("auto", "system", "reuse")
# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_REUSE_SETTINGS = (
    (_M_ARENA_MAX, 1),  # All threads share the main arena, which grows with brk.
    (_M_MMAP_MAX, 0),  # No block is served by its own mmap (nor unmapped when freed).
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # Never give the top of the heap back to the kernel.
    (_M_TOP_PAD, 256 << 20),  # Grow the heap in 256 MiB steps: fewer brk calls.
)


def configure(setting: str) -> bool:
  """'reuse' applies the settings above (True if glibc took them all; False off glibc);
  'system' leaves glibc's defaults (False); 'auto' is 'reuse' where the CPU computes the step
  and 'system' on a host that feeds an accelerator (unet_jax.precision.host_malloc)."""
  if setting not in CHOICES:
    raise ConfigError(f"host_malloc={setting!r}; set --config.host_malloc to "
                      f"{', '.join(CHOICES[:-1])} or {CHOICES[-1]}")
  from unet_jax import precision  # pylint: disable=import-outside-toplevel  # Imports JAX.
  setting, _ = precision.host_malloc(setting)
  if setting == "system":
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
  except (OSError, AttributeError, TypeError):  # Not glibc (macOS, musl).
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(parameter, value) == 1 for parameter, value in _REUSE_SETTINGS)
