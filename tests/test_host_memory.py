"""host_memory: with 'reuse', freed blocks are reused, not faulted in from the kernel again."""

import subprocess
import sys
import textwrap

import pytest

from unet_jax import host_memory

# Allocates, touches and frees a 64 MiB block (over glibc's largest mmap threshold, like
# XLA:CPU's big activations) 8 times from a new thread; prints the minor page faults it cost.
_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys, threading
    from unet_jax import host_memory
    applied = host_memory.configure(sys.argv[1])
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


def _page_faults(setting: str) -> tuple[str, int]:
  output = subprocess.run([sys.executable, "-c", _PROBE, setting], capture_output=True,
                          text=True, check=True).stdout.split()
  return output[0], int(output[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_reuse_keeps_freed_large_blocks_instead_of_faulting_them_in_again():
  applied, reuse_faults = _page_faults("reuse")
  untouched, system_faults = _page_faults("system")
  if applied != "True":
    pytest.skip("this libc does not take glibc's mallopt settings")
  assert untouched == "False"
  # glibc's defaults map and unmap the block each time: faults on every one of the 8 rounds
  # (16k per round with 4 KiB pages, fewer where transparent huge pages back it).
  assert system_faults >= 8
  assert reuse_faults < system_faults / 10


def test_an_unknown_setting_is_refused():
  with pytest.raises(ValueError, match="host_malloc='fast'"):
    host_memory.configure("fast")
