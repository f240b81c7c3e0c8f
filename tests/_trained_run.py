"""One tiny trained run per test process, shared by the evaluate and predict tests."""

import atexit
import functools
import pathlib
import shutil
import tempfile

from tests.conftest import tiny_config
from unet_jax import train


@functools.cache
def trained_workdir() -> pathlib.Path:
  """A workdir with config.json, metrics.jsonl and the checkpoint of a 2-step synthetic run."""
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="unet_jax_trained_"))
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2,
                                       log_every_steps=1), workdir)
  return workdir
