"""Errors caused by the user's input; the CLIs print them as one line."""


class UserError(Exception):
  """Bad input: the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """An unknown name or an invalid value in the configuration."""


class DataError(UserError):
  """A missing, corrupt or unverifiable dataset."""
