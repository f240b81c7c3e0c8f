"""Builds the optional native CPU kernels (unet_jax/ops/_cpu_kernels*.so): XLA FFI handlers
over oneDNN. Metadata lives in pyproject.toml.

The build needs a C++17 compiler with OpenMP, jaxlib's FFI headers and oneDNN's headers and
library (the `onednn-devel-cpu-gomp` wheel), all from pyproject's build requirements. If any
is missing (no compiler, a platform without the oneDNN wheel) or the compile fails, the
extension is skipped with a warning and the install still succeeds: conv_impl='auto' then
uses XLA's convolutions.
"""

import os
import time

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

SOURCES = [f"unet_jax/ops/csrc/{name}.cc" for name in (
    "onednn_conv", "filter_grad_matmul", "winograd_conv", "winograd_filter_grad", "lovasz",
    "norm_pool", "norm_pool_avx512", "norm_pool_avx2", "norm_pool_baseline")]


def _dist_file(distribution: str, name: str) -> str:
  """The absolute path of file `name` installed by `distribution`, or CompileError."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    files = metadata.files(distribution) or ()
  except metadata.PackageNotFoundError as e:
    raise CompileError(f"{distribution} is not installed in the build environment") from e
  for file in files:
    if str(file).replace("\\", "/").endswith(name):
      return os.path.normpath(str(file.locate()))
  raise CompileError(f"{distribution} has no {name}")


class OptionalNativeBuild(build_ext):
  """Finds the FFI and oneDNN headers in the build environment, then compiles."""

  def build_extension(self, ext):
    start = time.perf_counter()
    try:
      import jax.ffi  # pylint: disable=import-outside-toplevel
      ffi_include = jax.ffi.include_dir()
    except ImportError:
      try:
        import jaxlib  # pylint: disable=import-outside-toplevel
        ffi_include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
      except ImportError as e:
        raise CompileError("jaxlib (for the XLA FFI headers) is not installed") from e
    dnnl_header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    dnnl_library = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
    ext.include_dirs = [ffi_include, os.path.dirname(os.path.dirname(os.path.dirname(dnnl_header)))]
    ext.library_dirs = [os.path.dirname(dnnl_library)]
    super().build_extension(ext)
    print(f"unet_jax: native CPU kernels built in {time.perf_counter() - start:.1f} s")


setup(
    ext_modules=[
        Extension(
            "unet_jax.ops._cpu_kernels",
            sources=SOURCES,
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-fopenmp",
                                "-Wno-return-type"],
            # libdnnl.so.3 by soname: unet_jax.ops.library loads it from the environment first.
            extra_link_args=["-fopenmp", "-l:libdnnl.so.3"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalNativeBuild},
)
