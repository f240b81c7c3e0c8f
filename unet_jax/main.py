"""Trains a U-Net: python -m unet_jax.main --config configs/synthetic.py --workdir runs/demo."""

from absl import app, flags
from ml_collections import config_flags

from unet_jax import cli, train

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.", required=True)
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/synthetic.py.",
                                lock_config=True)
cli.define_distributed_flags()


def main(argv):
  cli.reject_extra_args(argv)
  with cli.exit_on_user_error():
    cli.maybe_initialize_distributed()
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
