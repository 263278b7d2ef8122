"""Errors caused by the user's input; the CLIs print them as one line."""

from typing import Iterable


class UserError(Exception):
  """Bad input: the message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """An unknown name or an invalid value in the configuration."""


def unknown(what: str, name: str, choices: Iterable[str]) -> ConfigError:
  """The error for a name that is not among `choices`."""
  return ConfigError(f'unknown {what} {name!r}; choose one of: {", ".join(choices)}')


class DataError(UserError):
  """A missing, corrupt or unverifiable dataset."""
