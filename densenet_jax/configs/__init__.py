"""Configs are code: `get_config()` in a module here or in any .py file."""

import importlib
import importlib.util
import pathlib

import ml_collections
from absl import flags
from ml_collections import config_flags

from densenet_jax import errors


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """Returns get_config() of a built-in config ('default', 'smoke', ...) or
  of a Python file that defines get_config()."""
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py":
    if not path.is_file():
      raise errors.UserError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"densenet_jax.configs.{name_or_path}")
    except ModuleNotFoundError:
      here = pathlib.Path(__file__).parent
      names = sorted(p.stem for p in here.glob("*.py") if p.stem[0] != "_")
      raise errors.UserError(
        f"unknown config {name_or_path!r}; use one of "
        f"{', '.join(names)} or a path to a .py file"
      ) from None
  if not hasattr(module, "get_config"):
    raise errors.UserError(f"config {name_or_path} defines no get_config()")
  return module.get_config()


def override(
  config: ml_collections.ConfigDict, args
) -> ml_collections.ConfigDict:
  """Applies `--config.KEY=VALUE` arguments in place and returns the config:
  ml_collections' config_flags parses them (the convention of flax's
  examples), dotted keys, each value parsed as its field's type."""
  args = [str(arg) for arg in args]
  for arg in args:
    if arg.startswith("--config."):
      _check_key(config, arg.removeprefix("--config.").partition("=")[0])
  argv = ["densenet_jax", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict(
    "config", config, flag_values=flag_values, sys_argv=argv
  )
  try:
    rest = flag_values(argv)[1:]
  except flags.Error as err:
    raise errors.UserError(str(err)) from None
  if rest:
    raise errors.UserError(f"unrecognized arguments: {' '.join(rest)}")
  return flag_values.config


def _check_key(config: ml_collections.ConfigDict, key: str) -> None:
  """A one-line error for a key the config lacks (config_flags would raise
  a bare AttributeError), naming the keys it has at that level."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      raise errors.UserError(f"unknown config key {key!r}")
    if part not in node:
      raise errors.UserError(
        f"unknown config key {key!r}; known: {', '.join(sorted(node))}"
      )
    node = node[part]
