"""Command-line plumbing shared by the entry points: one-line errors, nonzero exits."""

import contextlib
import os
import re
import sys
import threading

import jax
from absl import app, flags, logging

from unet_jax import parallel, peers
from unet_jax.errors import UserError


def _one_line(message: str) -> str:
  return " ".join(str(message).split())


@contextlib.contextmanager
def exit_on_user_error():
  """Turns a UserError into `error: <message>` on stderr and exit status 2; in a
  multi-process run, a failed collective (a peer died) into one line and exit status 3."""
  try:
    yield
    _say_goodbye()
  except UserError as e:
    _say_goodbye()  # Raised by every process alike (config, data, nan_policy=stop).
    logging.flush()
    sys.stderr.write(f"error: {_one_line(e)}\n")
    sys.exit(2)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    exit_lost_contact(str(e).splitlines()[0] if str(e) else type(e).__name__)


_peer_watch = None  # peers.PeerWatch of a multi-process run.


def _say_goodbye() -> None:
  """This process leaves in order: the others must not take it for dead."""
  if _peer_watch is not None:
    _peer_watch.close()


_EXITING = threading.Lock()  # Held until the end by the first thread that reports a loss.


def exit_lost_contact(reason: str) -> None:
  """One `error:` line and exit status 3, from whichever thread sees a peer gone first (a
  failed collective in the main thread, or peers.PeerWatch's)."""
  _EXITING.acquire()  # A second reporter waits here until the first has ended the process.
  if threading.current_thread() is not threading.main_thread():
    sys.stderr.write("\n")  # The progress bar, left open, may hold the current line.
  sys.stderr.write(f"error: process {jax.process_index()} lost contact with the other "
                   f"processes of this run ({reason}); rerun every process with the "
                   "same command to resume from the last checkpoint\n")
  sys.stderr.flush()
  os._exit(3)  # The orderly shutdown would wait on the dead peer, then abort.


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


def define_distributed_flags() -> None:
  """Flags that join a multi-process run (several hosts, or several processes per host)."""
  flags.DEFINE_bool("distributed", False, "Join a multi-process run, detecting the cluster "
                    "(SLURM, TPU pod, MPI) from its environment.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "A process whose peer stops "
                       "answering for this long exits with an error instead of hanging.")


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize when the flags ask for a multi-process run."""
  f = flags.FLAGS
  if f.distributed or f.coordinator_address or f.num_processes:
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                    f.heartbeat_timeout_seconds)
    global _peer_watch  # pylint: disable=global-statement
    _peer_watch = peers.PeerWatch(exit_lost_contact)
