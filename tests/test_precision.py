"""The hardware-dependent default model.dtype='auto': bfloat16 where the hardware computes it."""

import logging

import jax.numpy as jnp
import pytest

from unet_jax import models, precision
from unet_jax.ops import library

from conftest import tiny_config


@pytest.mark.parametrize("platform, conv_impl, flags, capability, expected", [
    ("cpu", "onednn", {"avx512f", "avx512_bf16"}, None, "bfloat16"),  # Zen 4/5, Cooper Lake.
    ("cpu", "onednn", {"avx512f", "amx_bf16", "amx_tile"}, None, "bfloat16"),  # Sapphire Rapids.
    ("cpu", "onednn", {"avx2", "avx512f"}, None, "float32"),  # Skylake: bf16 emulated.
    ("cpu", "xla", {"avx512_bf16", "amx_bf16"}, None, "float32"),  # XLA's kernels: no gain.
    ("gpu", "xla", set(), "9.0", "bfloat16"),  # Hopper.
    ("gpu", "xla", set(), "8.0", "bfloat16"),  # Ampere A100.
    ("gpu", "xla", set(), "7.5", "float32"),  # Turing.
    ("gpu", "xla", set(), "gfx90a", "float32"),  # ROCm: not measured.
    ("tpu", "xla", set(), None, "bfloat16"),
])
def test_auto_dtype_follows_the_hardware(platform, conv_impl, flags, capability, expected):
  name, reason = precision.auto_dtype(platform, conv_impl, flags, capability)
  assert name == expected
  assert reason  # The log line says why.


def test_explicit_dtype_wins_over_auto():
  assert precision.compute_dtype("float32") == jnp.float32
  assert precision.compute_dtype("bfloat16") == jnp.bfloat16


def test_auto_resolves_on_this_machine_and_is_logged(caplog):
  precision._resolve.cache_clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.INFO):
    dtype = precision.compute_dtype("auto")
  native_bf16 = (library.unavailable_reason() is None
                 and set(precision.BF16_CPU_FLAGS) & precision.cpu_flags())
  assert dtype == (jnp.bfloat16 if native_bf16 else jnp.float32)
  assert any("model.dtype=auto computes in" in r.getMessage() for r in caplog.records)


def test_model_from_config_takes_the_resolved_dtype():
  config = tiny_config()
  config.model.dtype = "auto"
  assert models.from_config(config).dtype == precision.compute_dtype("auto")
  config.model.dtype = "float32"
  assert models.from_config(config).dtype == jnp.float32


def test_unknown_dtype_is_a_config_error():
  config = tiny_config()
  config.model.dtype = "fp8"
  with pytest.raises(ValueError, match="model.dtype='fp8' is not one of"):
    models.from_config(config)
