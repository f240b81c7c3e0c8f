"""glibc malloc settings that keep freed host memory for reuse instead of returning it.

XLA:CPU allocates every intermediate buffer of a step with malloc and frees it after use.
glibc serves blocks over its mmap threshold (at most 32 MiB) with a fresh mmap, and worker
threads get their own arenas whose tops are trimmed back to the kernel, so a step with large
buffers page-faults through gigabytes of zero-filled memory every time: the pyimagesearch TGS
recipe (VALID 16 -> 64 channels, 128x128, batch 64) spent 2.7 s of its 4.0 s CPU step in the
kernel, 1.25 M page faults per step. One arena fed from the heap and never trimmed reuses the
same pages: that run's 40 steps took 77 s instead of 172 s, with identical metrics.

It is not a free lunch, hence `config.host_malloc = 'system'` by default: nothing freed goes
back to the kernel and the one heap fragments, so RSS grows well past glibc's peak (the SAME
`tgs` benchmark model: 2.3-2.4x the peak memory for no speed-up, benchmarks/results/*/tgs.md;
the paper recipe at batch 32 outgrew the 24 GiB machine by its third step, where glibc's default
held ~10 GiB and peaked at 16 GiB over the whole run, evaluation included), and one
arena serialises malloc across the input pipeline's threads. Use it where a run is bound by
page faults (high `sys` time) and has memory to spare. The settings apply to allocations made
afterwards and a thread keeps the arena it first used, so apply them before JAX (or PyTorch)
starts its thread pools: before the first computation.
"""

import ctypes
import ctypes.util

from unet_jax.errors import ConfigError

CHOICES = ("system", "reuse")
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
  'system' leaves glibc's defaults (False)."""
  if setting not in CHOICES:
    raise ConfigError(f"host_malloc={setting!r}; set --config.host_malloc to "
                      f"{' or '.join(CHOICES)}")
  if setting == "system":
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
  except (OSError, AttributeError, TypeError):  # Not glibc (macOS, musl).
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(parameter, value) == 1 for parameter, value in _REUSE_SETTINGS)
