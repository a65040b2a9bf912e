"""Configs are code: `get_config()` in a module here or in any .py file."""

import ast
import importlib
import importlib.util
import pathlib

import ml_collections

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


def override(config: ml_collections.ConfigDict, assignments) -> None:
  """Applies 'key=value' strings (dotted keys, Python literals) in place."""
  for assignment in assignments:
    key, sep, text = assignment.partition("=")
    if not sep:
      raise errors.UserError(
        f"override {assignment!r} is not of the form key=value"
      )
    parent, _, leaf = key.strip().rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node[part] if part in node else None
      if not isinstance(node, ml_collections.ConfigDict):
        raise errors.UserError(f"unknown config key {key!r}")
    if leaf not in node:
      raise errors.UserError(
        f"unknown config key {key!r}; known: {', '.join(sorted(node))}"
      )
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()  # a bare string such as model=tiny
    if isinstance(node[leaf], float) and isinstance(value, int):
      value = float(value)
    try:
      node[leaf] = value
    except TypeError as err:
      raise errors.UserError(f"bad value for {key}: {err}") from None
