"""glibc malloc settings that keep freed host memory for reuse instead of returning it.

XLA:CPU allocates every intermediate buffer of a step with malloc and frees it after use.
glibc serves blocks over its mmap threshold (at most 32 MiB) with a fresh mmap, and worker
threads get their own arenas whose tops are trimmed back to the kernel, so a step with large
buffers page-faults through gigabytes of zero-filled memory every time: the pyimagesearch TGS
recipe (VALID 16 -> 64 channels, 128x128, batch 64) spent 2.7 s of its 4.0 s CPU step in the
kernel, 1.25 M page faults per step. One arena fed from the heap and never trimmed reuses the
same pages: that run's 40 steps took 77 s instead of 172 s, with identical metrics.

It is not the global default (`host_malloc='system'` is): the one never-trimmed heap
fragments and grows, and whether the page faults cost much depends on the run. Real runs on a
quiet 2-core Intel Xeon (2026-12-01): configs/tgs.py, 300 steps + one evaluation, 260 -> 195 ms
a step (kernel time 42 -> 2 s) for a peak RSS of 1.2 -> 2.3 GB, so configs/tgs.py sets reuse;
configs/carvana.py, 40 steps + one evaluation, 1.69 -> 1.62 s a step for 3.4 -> 9.5 GB, so it
keeps system. An earlier measurement on a machine shared with other jobs had seen no gain for
either. The paper recipe at batch 32 outgrew 24 GiB by its third step. Use it where a
run is bound by page faults (high `sys` time) and has memory to spare. The settings apply to
allocations made afterwards and a thread keeps the arena it first used, so apply them before
JAX (or PyTorch) starts its thread pools: before the first computation.
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
