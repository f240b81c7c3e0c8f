"""conv_impl: which kernels a model uses, and the fallback when the native ones are missing."""

import jax
import pytest

from tests.conftest import init_variables, tiny_config
from unet_jax import models
from unet_jax.errors import ConfigError
from unet_jax.ops import library


@pytest.fixture
def without_native_kernels(monkeypatch):
  """As on a machine where the extension was not built; the real state is restored after."""
  monkeypatch.setenv(library.DISABLE_VARIABLE, "1")
  library.load.cache_clear()
  yield
  monkeypatch.delenv(library.DISABLE_VARIABLE)
  library.load.cache_clear()


def test_auto_is_xla_off_the_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert library.resolve("auto") == "xla"
  assert library.resolve("xla") == "xla"


def test_auto_is_onednn_on_the_cpu_when_built():
  if library.unavailable_reason():
    pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
  assert library.resolve("auto") == "onednn"


def test_unknown_choice_is_refused():
  with pytest.raises(ValueError, match="conv_impl"):
    library.resolve("cudnn")
  with pytest.raises(ConfigError, match="--config.model.conv_impl"):
    models.from_config(tiny_config(**{"model.conv_impl": "cudnn"}))


def test_without_the_kernels_auto_falls_back_and_onednn_is_refused(without_native_kernels):
  assert "UNET_JAX_DISABLE_NATIVE" in library.unavailable_reason()
  assert library.resolve("auto") == "xla"
  with pytest.raises(library.KernelsUnavailable, match="conv_impl=onednn"):
    library.resolve("onednn")
  with pytest.raises(ConfigError, match="conv_impl=auto"):
    models.from_config(tiny_config(**{"model.conv_impl": "onednn"}))
  model = models.from_config(tiny_config())  # auto: builds and runs on XLA.
  images = jax.numpy.zeros((1, 16, 16, 3))
  assert model.apply(init_variables(model, images), images).shape == (1, 16, 16, 1)


def test_bf16_models_without_onednn_bf16_convolutions_use_xla(monkeypatch):
  """An AVX2-only CPU: oneDNN 3.2 has no bf16 convolution there, so bf16 models fall back."""
  if library.unavailable_reason():
    pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
  monkeypatch.setattr(library, "bf16_convs_supported", lambda: False)
  assert library.resolve("auto", jax.numpy.bfloat16) == "xla"
  assert library.resolve("auto", jax.numpy.float32) == "onednn"
  with pytest.raises(library.KernelsUnavailable, match="no bfloat16 convolutions"):
    library.resolve("onednn", jax.numpy.bfloat16)
  model = models.from_config(tiny_config(**{"model.dtype": "bfloat16"}))
  images = jax.numpy.zeros((1, 16, 16, 3))
  assert model.apply(init_variables(model, images), images).shape == (1, 16, 16, 1)


def test_onednn_answers_whether_it_has_bf16_convolutions_here():
  """The probe asks oneDNN itself; it agrees with the CPU flags oneDNN 3.2 needs (AVX-512)."""
  if library.unavailable_reason():
    pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
  flags = open("/proc/cpuinfo").read().split()
  assert library.bf16_convs_supported() == ("avx512bw" in flags and "avx512vl" in flags)


def test_a_stale_build_is_refused_with_the_fix():
  """A library left by an older build (other handler operands) must not be registered."""
  class Stale:  # An old build: no ABI number, some handlers missing.
    UnetConvForward = object()

  class Current:
    def unet_kernels_abi_version(self):
      return library.ABI_VERSION

  current = Current()
  for symbol in library.TARGETS.values():
    setattr(current, symbol, object())
  library.check_abi(current, "_cpu_kernels.so")  # Passes.
  for stale in (Stale(), type("Newer", (), {"unet_kernels_abi_version":
                                            lambda self: library.ABI_VERSION + 1})()):
    with pytest.raises(library.KernelsUnavailable, match="stale build.*pip install -v -e ."):
      library.check_abi(stale, "_cpu_kernels.so")
  if library.unavailable_reason() is None:  # The library built from these sources passes.
    library.check_abi(library.load(), "_cpu_kernels.so")
