"""A config file for CLI tests: the 16x16, depth-2 synthetic config of conftest.tiny_config.

python -m unet_jax.main --config tests/tiny_config.py --workdir /tmp/run
"""

from tests.conftest import tiny_config


def get_config():
  return tiny_config(num_train_steps=12, eval_every_steps=4, log_every_steps=1)
