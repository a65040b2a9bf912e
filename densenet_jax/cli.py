"""What the evaluate, predict, show and summary commands share: one-line
errors, argument types, and the workdir/checkpoint arguments."""

import argparse
import sys

from densenet_jax import errors, xla_flags


class ArgumentParser(argparse.ArgumentParser):
  """Bad arguments end like every other user error: one line, exit 2."""

  def error(self, message):
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _integer(text: str, low: int, what: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < low:
    raise argparse.ArgumentTypeError(f"must be {what}, not {value}")
  return value


def positive_int(text: str) -> int:
  return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
  return _integer(text, 0, "an integer >= 0")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--workdir",
    required=True,
    help="a training workdir, or a checkpoint folder in one "
    "(WORKDIR/checkpoints/best)",
  )
  parser.add_argument(
    "--checkpoint",
    choices=("best", "latest"),
    help="which checkpoint of the workdir: best (the lowest validation "
    "loss) or latest (the last state); default: the one training scored on "
    "test (the run's test_checkpoint); a checkpoint folder given as "
    "--workdir wins",
  )


def run(main, argv=None):
  """Calls main(argv); a UserError exits non-zero with one line. Adds the
  XLA flags that training uses (densenet_jax.xla_flags) first, so that a
  command computes exactly as training did."""
  xla_flags.apply_defaults()
  try:
    return main(argv)
  except errors.UserError as err:
    sys.exit(f"error: {err}")
