"""Process-wide JAX settings a run makes before its first device use."""

import logging
import os

import jax
from jax._src import xla_bridge  # backends_are_initialized: no public equivalent.


def configure_cpu_dispatch(asynchronous: bool) -> None:
  """Whether XLA:CPU queues steps on its own threads (True) or runs each one on the calling
  thread (False). Read when JAX creates its CPU client, so call it before the first device
  use. Synchronous is the default: on the 2-core AMD EPYC the tgs step with the native kernels
  took 453-479 ms inline and 455-710 ms with 20 steps queued asynchronously."""
  flag = "jax_cpu_enable_async_dispatch"
  initialized = getattr(xla_bridge, "backends_are_initialized", lambda: False)
  if jax.config.read(flag) != asynchronous and initialized():
    logging.warning("cpu_async_dispatch=%s comes too late: JAX's CPU client already exists",
                    asynchronous)
  jax.config.update(flag, asynchronous)


def enable_compilation_cache(cache_dir: str) -> None:
  """Persists compiled XLA programs in `cache_dir` so later runs skip compilation.

  On a GPU, also XLA's per-fusion autotuning results (the convolution algorithms and GEMM
  tilings it measured), so a rerun whose program changed still skips re-measuring the
  fusions that did not; jax 0.10-0.12 enable this with the cache by default, set here so it
  does not depend on that default. Older jax without the option: the cache alone."""
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # The user's, if set.
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:
      jax.config.update("jax_persistent_cache_enable_xla_caches",
                        "xla_gpu_per_fusion_autotune_cache_dir")
    except AttributeError:
      pass
