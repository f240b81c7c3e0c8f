"""One tiny trained run per test process, shared by the evaluate and predict tests."""

import atexit
import functools
import pathlib
import shutil
import tempfile

from tests.conftest import tiny_config
from unet_jax import train


FLOAT32 = {"model.dtype": "float32"}


@functools.cache
def trained_workdir() -> pathlib.Path:
  """A workdir with config.json, metrics.jsonl and the checkpoint of a 2-step synthetic run,
  float32 whatever model.dtype='auto' picks on this CPU: the tests compare probabilities
  computed in other batchings (flip TTA, ensembles), which bfloat16 rounds apart."""
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="unet_jax_trained_"))
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2,
                                       log_every_steps=1, **FLOAT32), workdir)
  return workdir
