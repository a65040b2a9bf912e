"""budget: how many epochs fit in a time budget."""

import time

import pytest

from densenet_jax import budget, epoch


@pytest.mark.parametrize(
  "seconds, expected",
  [
    (0.0, (1, 1)),  # nothing left: the first epoch is the run
    (19.0, (1, 1)),
    (20.0, (2, 1)),  # one full-size epoch
    (50.0, (4, 2)),  # 1 more low-res (10) and 2 full-size (40)
    (90.0, (7, 4)),  # round(3.5) = 4: 3 more low-res and 3 full-size
    (109.0, (7, 4)),
    (110.0, (8, 4)),
  ],
)
def test_epochs_within_with_low_res_epochs_first(seconds, expected):
  assert budget.epochs_within(seconds, 10.0, 20.0, 0.0, 0.5) == expected


def test_the_final_test_is_costed_by_images_and_views():
  # 1,000 validation images in 4 s between epochs, one view each: 10,000
  # test images of six views take 60 times as long as 1,000 of one.
  assert budget.final_test_seconds(4.0, 1000, 10000, 1, 6) == 240.0
  assert budget.final_test_seconds(4.0, 1000, 10000, 6, 6) == 40.0
  assert budget.final_test_seconds(4.0, 5000, 10000) == 8.0


def test_epochs_within_counts_the_time_between_epochs():
  # Full-size only: each epoch after the first takes 30 s and 5 s more.
  assert budget.epochs_within(104.0, 30.0, 30.0, 5.0, 0.0) == (3, 0)
  assert budget.epochs_within(105.0, 30.0, 30.0, 5.0, 0.0) == (4, 0)
  # All low-res: only the first epoch's time counts.
  assert budget.epochs_within(100.0, 10.0, 99.0, 0.0, 1.0) == (11, 11)


def test_epochs_within_counts_from_the_low_res_epochs_done():
  # 3 low-res epochs done: 2 full-size ones (40) make 5; 6 would need 3
  # (60); 7, round(3.5) = 4 of them low-res, 1 more low-res and 3
  # full-size (70). With less time, none more, and never fewer than 3.
  assert budget.epochs_within(59.0, 10.0, 20.0, 0.0, 0.5, done=3) == (5, 3)
  assert budget.epochs_within(70.0, 10.0, 20.0, 0.0, 0.5, done=3) == (7, 4)
  assert budget.epochs_within(19.0, 10.0, 20.0, 0.0, 0.5, done=3) == (3, 3)
  assert budget.epochs_within(20.0, 10.0, 20.0, 0.0, 0.2, done=3) == (4, 3)


def test_train_steps_are_timed_taking_turns():
  calls = []

  def step_of(name, seconds):
    def step(state, batch):
      calls.append(name)
      time.sleep(seconds)
      return state + 1, None

    return step

  low, full = budget.seconds_per_step(
    (step_of("low", 0.01), step_of("full", 0.03)), [0, 0], None, repeats=3
  )
  assert calls == ["low", "full"] * 4  # a first, untimed call of each
  assert low >= 0.01 and full >= 0.03  # the fastest call of each


def test_epochs_fitting_counts_whole_epochs_with_their_gaps():
  assert budget.epochs_fitting(229.0, 100.0, 15.0) == 1
  assert budget.epochs_fitting(230.0, 100.0, 15.0) == 2
  assert budget.epochs_fitting(-5.0, 100.0, 15.0) == 0  # over budget


def test_gaps_are_the_seconds_between_epochs():
  history = [
    {"epoch_time_s": 10.0, "wall_time_s": 30.0},
    {"epoch_time_s": 20.0, "wall_time_s": 53.0},
    {"epoch_time_s": 20.0, "wall_time_s": 77.5},
  ]
  assert epoch.gaps(history) == [3.0, 4.5]
