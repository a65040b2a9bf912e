"""Stopping training on Ctrl-C or SIGTERM, at a step boundary that every
process agrees on (train.py then saves the state and exits)."""

import contextlib
import signal

import jax

from densenet_jax import distributed


class Interrupted(Exception):
  """Training stopped by a signal after saving the latest state."""


@contextlib.contextmanager
def stop_on_signals():
  """Turns the first SIGINT/SIGTERM into a flag the loop checks each step."""
  flag = {"stop": None}

  def handler(signum, frame):
    flag["stop"] = signal.Signals(signum).name
    signal.signal(signum, previous[signum])  # a second signal acts at once

  previous = {}
  with contextlib.suppress(ValueError):  # only the main thread has signals
    for sig in (signal.SIGINT, signal.SIGTERM):
      previous[sig] = signal.signal(sig, handler)
  try:
    yield flag
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


class Stopper:
  """Decides, identically on every process, whether to stop at a step.

  A signal may reach processes at different steps; one that stopped alone
  would leave the others waiting in a collective. With several processes the
  flags are compared every `every` steps; a single process stops at once."""

  def __init__(self, flag: dict, every: int):
    self.flag, self.every = flag, every if jax.process_count() > 1 else 1

  def __call__(self, step: int, force: bool = False) -> bool:
    if not force and step % self.every:
      return False
    return distributed.any_process(self.flag["stop"] is not None)
