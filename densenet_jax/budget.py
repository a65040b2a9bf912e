"""A schedule sized to a time budget: as many epochs as fit in it.

With `time_budget_minutes`, the run times its first epoch (a warm-up epoch,
whose learning rates do not depend on the run's length), then decides how
many epochs fit in what is left of the budget and how many of them train at
low resolution (the config's share, low_res_epochs / num_epochs); the
learning-rate schedule then runs over that many epochs. A full-size epoch
is costed as a low-resolution one plus, for each of its steps, the
difference of the two train steps' times on one batch (the host's work per
step is the same at both sizes). So the same command uses an hour on any
machine, whatever its speed. The plan is made again after each further
low-resolution epoch from the last ones' times (one epoch's time can be a
sixth off the next ones' either way, and the first alone would fix too few
or too many of them for the whole run), then corrected after every
full-size epoch from the last ones' measured times (a VM's speed drifts
within an hour, and one timed step misjudges an epoch by a fifth either
way); the learning-rate schedule's rest is fitted to each change without a
jump (optim.retime). A resumed run keeps the plan it had.
"""

import time

import jax


def epochs_within(
  seconds: float,
  low_s: float,
  full_s: float,
  overhead_s: float,
  low_res_share: float,
  done: int = 1,
) -> tuple[int, int]:
  """(epochs, low-res epochs) of the longest run whose epochs after the
  `done` ones, all low-res when `low_res_share` > 0, fit in `seconds`: each
  takes `low_s` at low resolution or `full_s` at full size (training
  time), plus `overhead_s` (validation, checkpoints).
  Low-res epochs come first, round(share * epochs) of them, at least the
  `done` ones."""
  best = (done, done if low_res_share else 0)
  n = done
  while True:
    n += 1
    small = max(done, round(low_res_share * n)) if low_res_share else 0
    cost = (max(small - done, 0) * (low_s + overhead_s)) + (
      n - max(small, done)
    ) * (full_s + overhead_s)
    if cost > seconds or n > 100_000:
      return best
    best = (n, small)


def epochs_fitting(seconds: float, epoch_s: float, overhead_s: float) -> int:
  """How many more epochs of `epoch_s` seconds, each followed by
  `overhead_s`, fit in `seconds`."""
  return max(int(seconds // (epoch_s + overhead_s)), 0)


def final_test_seconds(
  val_s: float,
  val_images: int,
  test_images: int,
  val_views: int = 1,
  test_views: int = 1,
) -> float:
  """The test at the end costed from a validation's seconds (or the gap
  between epochs, validation mostly): scaled by the images and by the views
  each one takes."""
  return val_s * test_images * test_views / (val_images * val_views)


def seconds_per_step(steps, states, batch, repeats: int = 5) -> list[float]:
  """The fastest of `repeats` calls of each (donating) train step on one
  batch, the steps taking turns (a drift of the machine's speed then
  weighs on each alike), after a first call of each that compiles it; each
  of `states` (one per step) is used up."""
  states = list(states)
  times = [[] for _ in steps]
  for repeat in range(repeats + 1):
    for i, step in enumerate(steps):
      start = time.perf_counter()
      states[i], _ = step(states[i], batch)
      jax.block_until_ready(states[i])
      if repeat:
        times[i].append(time.perf_counter() - start)
  return [min(t) for t in times]
