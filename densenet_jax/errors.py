"""Errors caused by the user's input: the CLIs print them as one line."""


class UserError(ValueError):
  """Bad input (config, data, workdir, checkpoint), named in the message."""


class ConfigError(UserError):
  """A configuration that cannot run, with the value that is wrong."""


def check_choice(key: str, value, choices) -> None:
  """UserError unless `value`, the field `key`'s, is one of `choices`."""
  if value not in choices:
    raise UserError(
      f"unknown {key} {value!r}; choose one of {', '.join(choices)}"
    )
