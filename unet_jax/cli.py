"""Command-line plumbing shared by the entry points: one-line errors, nonzero exits."""

import contextlib
import os
import re
import sys

from absl import app, flags, logging

from unet_jax.errors import UserError


def _one_line(message: str) -> str:
  return " ".join(str(message).split())


@contextlib.contextmanager
def exit_on_user_error():
  """Turns a UserError into `error: <message>` on stderr and exit status 2."""
  try:
    yield
  except UserError as e:
    logging.flush()
    sys.stderr.write(f"error: {_one_line(e)}\n")
    sys.exit(2)


def reject_extra_args(argv) -> None:
  if len(argv) > 1:
    sys.stderr.write(f"error: unexpected arguments {' '.join(argv[1:])}; flags look like "
                     "--config=configs/synthetic.py --workdir=runs/demo\n")
    sys.exit(2)


def _explain_flag_error(error: Exception, argv) -> str:
  message = str(error)
  if isinstance(error, (AttributeError, KeyError)):
    key = re.search(r"(\w+)\\*'", message)
    key = key.group(1) if key else message
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and key in a.split("=")[0].split(".")), "--config")
    hint = re.search(r'Did you mean "(\w+)"', message)
    hint = f' (did you mean "{hint.group(1)}"?)' if hint else ""
    return (f"unknown config key {key!r} in {flag}{hint}; every field is listed with its "
            "meaning in configs/default.py")
  return _one_line(message)


def _flags_parser(argv):
  """absl's parser, with its multi-line failures reduced to one line naming the fix."""
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.keys()  # Loads the config file now, so a bad path fails here.
    return remaining
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    sys.stderr.write(f"error: {_explain_flag_error(e, argv)}\n")
    sys.exit(2)


class _OwnInfoOnly:
  """Keeps INFO lines from unet_jax only; other libraries speak from WARNING (30) up."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or f"{os.sep}unet_jax{os.sep}" in record.pathname


def run(main) -> None:
  """app.run with one-line flag errors and INFO logs (ours) on stderr."""
  logging.get_absl_handler().python_handler.addFilter(_OwnInfoOnly())
  app.run(main, flags_parser=_flags_parser)
