"""Loads the native CPU kernels (oneDNN convolutions, BatchNorm/ReLU and max-pool passes, the
Lovasz sort) and registers them with XLA; says why not when they cannot be used.

The shared library is built by `pip install` (setup.py) next to this file. It links
oneDNN's `libdnnl.so.3` from the `onednn-cpu-gomp` wheel, which lives in the environment's
`lib/` folder, so that library is loaded first (by full path) and the dynamic linker reuses it.
"""

import ctypes
import functools
import importlib.machinery
import logging
import os
import pathlib
import sys

import jax
import jax.numpy as jnp

TARGETS = {  # XLA custom-call name -> exported handler symbol.
    "unet_conv_forward": "UnetConvForward",
    "unet_conv_backward_data": "UnetConvBackwardData",
    "unet_conv_backward_weights": "UnetConvBackwardWeights",
    "unet_bn_stats": "UnetBnStats",
    "unet_bn_relu": "UnetBnRelu",
    "unet_bn_relu_backward_sums": "UnetBnReluBackwardSums",
    "unet_bn_relu_backward": "UnetBnReluBackward",
    "unet_max_pool": "UnetMaxPool",
    "unet_max_pool_backward": "UnetMaxPoolBackward",
    "unet_concat_channels": "UnetConcatChannels",
    "unet_split_channels": "UnetSplitChannels",
    "unet_sample_sums": "UnetSampleSums",
    "unet_sample_affine": "UnetSampleAffine",
    "unet_winograd_kernel": "UnetWinogradKernel",
    "unet_winograd_conv": "UnetWinogradConv",
    "unet_winograd_filter_grad": "UnetWinogradFilterGrad",
    "unet_lovasz_weights": "UnetLovaszWeights",
}
IMPLS = ("auto", "xla", "onednn")
# The handlers' operand layout this code calls; equal to unet_kernels_abi_version() in
# csrc/onednn_conv.cc. Bump both when a handler's operands or attributes change, or a kernel's
# speed does: conv_algo=auto's cached timings are keyed by it (unet_jax/ops/winograd.py).
ABI_VERSION = 12


class KernelsUnavailable(RuntimeError):
  """The native kernels cannot be used here; the message says why and what to do."""


def _extension_path() -> pathlib.Path | None:
  """This interpreter's build of the library (in-place builds of other Pythons may sit beside it)."""
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    if (here / f"_cpu_kernels{suffix}").exists():
      return here / f"_cpu_kernels{suffix}"
  return None


def _dnnl_candidates():
  """Where the onednn-cpu-gomp wheel puts libdnnl.so.3: <prefix>/lib of this environment."""
  prefixes = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))]
  for prefix in dict.fromkeys(prefixes):
    yield os.path.join(prefix, "lib", "libdnnl.so.3")
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    for file in metadata.files("onednn-cpu-gomp") or ():
      if file.name == "libdnnl.so.3":
        yield str(file.locate())
  except metadata.PackageNotFoundError:
    pass


DISABLE_VARIABLE = "UNET_JAX_DISABLE_NATIVE"  # Set to 1: behave as if the kernels were not built.


@functools.lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
  """The loaded and registered kernel library; raises KernelsUnavailable saying why not."""
  if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
    raise KernelsUnavailable(f"the native CPU kernels are disabled ({DISABLE_VARIABLE} is set)")
  path = _extension_path()
  if path is None:
    raise KernelsUnavailable(
        "the native CPU kernels were not built at install time (no C++ compiler, no oneDNN "
        "wheel for this platform, or a build error: reinstall with `pip install -v -e .` to "
        "see it)")
  dnnl = next((p for p in _dnnl_candidates() if os.path.exists(p)), None)
  if dnnl is None:
    raise KernelsUnavailable("oneDNN's libdnnl.so.3 was not found; `pip install "
                             "onednn-cpu-gomp==2023.2.0` in this environment")
  try:
    ctypes.CDLL(dnnl, mode=ctypes.RTLD_GLOBAL)
    library = ctypes.CDLL(str(path))
  except OSError as e:
    raise KernelsUnavailable(f"cannot load {path.name}: {e}") from e
  check_abi(library, path.name)
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return library


def check_abi(library, name: str) -> None:
  """Refuses a build of other sources than this code (e.g. left by a failed rebuild)."""
  version = getattr(library, "unet_kernels_abi_version", None)
  found = version() if version is not None else 1
  if found != ABI_VERSION or any(not hasattr(library, s) for s in TARGETS.values()):
    raise KernelsUnavailable(
        f"{name} is a stale build (kernel ABI {found}, this code needs {ABI_VERSION}); "
        "rebuild it with `pip install -v -e .`")


def unavailable_reason() -> str | None:
  """None when the kernels load, else one line saying why they cannot."""
  try:
    load()
  except KernelsUnavailable as e:
    return str(e)
  return None


@functools.lru_cache(maxsize=None)
def _log_fallback(reason: str) -> None:
  logging.info("conv_impl=auto uses XLA's convolutions: %s", reason)


@functools.lru_cache(maxsize=None)
def bf16_convs_supported() -> bool:
  """Whether oneDNN has bfloat16 convolutions on this CPU (it needs AVX-512; asked of oneDNN)."""
  return bool(load().unet_onednn_bf16_conv_supported())


def bf16_unavailable_reason() -> str | None:
  """None when the kernels load and have bf16 convolutions here, else one line saying why not."""
  reason = unavailable_reason()
  if reason is None and not bf16_convs_supported():
    reason = "oneDNN has no bfloat16 convolutions on this CPU (they need AVX-512)"
  return reason


def resolve(conv_impl: str, dtype=None) -> str:
  """'auto' -> 'onednn' on the CPU backend when the kernels load (and, for a bfloat16 `dtype`,
  oneDNN has bf16 convolutions on this CPU), else 'xla' (logged once).

  'onednn' asked for explicitly where the kernels cannot be used raises KernelsUnavailable.
  """
  if conv_impl not in IMPLS:
    raise ValueError(f"conv_impl must be one of {IMPLS}, got {conv_impl!r}")
  if conv_impl == "xla":
    return "xla"
  if conv_impl == "auto" and jax.default_backend() != "cpu":
    return "xla"
  bf16 = dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
  reason = bf16_unavailable_reason() if bf16 else unavailable_reason()
  if bf16 and reason is not None and unavailable_reason() is None:
    reason += "; model.dtype=float32 (what auto picks here) keeps the native kernels"
  if reason is None:
    return "onednn"
  if conv_impl == "onednn":
    raise KernelsUnavailable(f"conv_impl=onednn: {reason}; or set conv_impl to xla or auto")
  _log_fallback(reason)
  return "xla"
