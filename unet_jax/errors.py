"""Errors caused by the user's input: reported as one line and a nonzero exit, no traceback."""


class UserError(Exception):
  """Bad input (config, data, paths); the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class MissingDataError(UserError, FileNotFoundError):
  """The data a config points at is not there."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be created or written."""


class NonFiniteError(UserError, FloatingPointError):
  """Training met a non-finite loss or gradient under nan_policy='stop'."""
