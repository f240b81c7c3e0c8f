"""host_memory: freed blocks are reused, not re-faulted from the kernel at every step."""

import os
import subprocess
import sys
import textwrap

import pytest

from unet_jax import host_memory

# Allocates, touches and frees a 64 MiB block (over glibc's largest mmap threshold, like
# XLA:CPU's activations) 8 times from a worker thread; prints the minor page faults it cost.
_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys, threading
    from unet_jax import host_memory
    applied = host_memory.keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20
    def churn():
      for _ in range(8):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    churn()  # The first round may fault the heap in; count the rounds after it.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(malloc_setting: str) -> tuple[str, int]:
  env = dict(os.environ, UNET_JAX_MALLOC=malloc_setting)
  output = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, check=True).stdout.split()
  return output[0], int(output[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
  applied, tuned_faults = _page_faults("tuned")
  skipped, system_faults = _page_faults("system")
  if applied != "True":
    pytest.skip("this libc does not take glibc's mallopt settings")
  assert skipped == "False"  # UNET_JAX_MALLOC=system leaves glibc's defaults alone.
  # glibc's defaults map and unmap the block each time: faults on every one of the 8 rounds
  # (16k per round with 4 KiB pages, fewer where transparent huge pages back it).
  assert system_faults >= 8
  assert tuned_faults < system_faults / 10


@pytest.mark.parametrize("platforms, on_cpu", [("cpu", True), ("cuda", False), ("tpu,cpu", False)])
def test_jax_platforms_decides_whether_the_settings_apply(monkeypatch, platforms, on_cpu):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.computes_on_cpu() is on_cpu
