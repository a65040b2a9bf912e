"""Errors caused by the user's input: the CLIs print them as one line."""


class UserError(ValueError):
  """Bad input (config, data, workdir, checkpoint), named in the message."""


class ConfigError(UserError):
  """A configuration that cannot run, with the value that is wrong."""
