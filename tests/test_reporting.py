"""Per-epoch rows: which epochs score the test set, and metrics.csv and
curves.png when only some of them do."""

import ml_collections
import pytest

from densenet_jax import epoch, reporting


@pytest.mark.parametrize(
  "every, expected", [(0, []), (1, [1, 2, 3, 4, 5, 6, 7]), (3, [3, 6, 7])]
)
def test_the_test_set_is_scored_every_nth_epoch_and_the_last(every, expected):
  config = ml_collections.ConfigDict(
    {"test_every_epochs": every, "num_epochs": 7}
  )
  assert [e for e in range(1, 8) if epoch.scores_test(config, e)] == expected


def test_rows_without_test_scores_leave_their_cells_empty(tmp_path):
  history = []
  for n in range(1, 5):
    row = {
      "epoch": n,
      "loss": 2.0 / n,
      "accuracy": 0.2 * n,
      "val_loss": 2.5 / n,
      "val_accuracy": 0.15 * n,
      "learning_rate": 0.1,
      "epoch_time_s": 10.0,
      "wall_time_s": 12.0 * n,
    }
    if n % 2 == 0:
      row.update(test_loss=2.4 / n, test_accuracy=0.16 * n)
    history.append(row)
  path = tmp_path / "metrics.csv"
  reporting.write_metrics_csv(path, history)
  lines = path.read_text().splitlines()
  assert lines[0].endswith(",wall_time_s,test_loss,test_accuracy")
  assert lines[1].endswith(",12.0,,")
  assert reporting.read_metrics_csv(path) == history

  reporting.plot_curves(history, tmp_path / "curves.png")
  reporting.plot_curves(history[:1], tmp_path / "untested.png")
  # Three panels (test accuracy against wall time) when any epoch has a
  # test score, else two: the image is wider.
  import matplotlib.image

  wide = matplotlib.image.imread(tmp_path / "curves.png").shape[1]
  narrow = matplotlib.image.imread(tmp_path / "untested.png").shape[1]
  assert wide == pytest.approx(1.5 * narrow, rel=0.02)
