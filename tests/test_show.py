"""show: sample grids of a split and a run's curves; bad input."""

import re

import numpy as np
import pytest
from PIL import Image

from densenet_jax import data, show


def test_sample_indices_pick_each_class_reproducibly():
  labels = data.synthetic_split(200, seed=3).labels
  chosen = show.sample_indices(labels, 10, 7, seed=1)
  assert len(chosen) == 10
  for c, indices in enumerate(chosen):
    assert len(indices) == min(7, (labels == c).sum())
    assert len(set(indices)) == len(indices) and (labels[indices] == c).all()
  again = show.sample_indices(labels, 10, 7, seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(chosen, again))


def test_samples_grid_of_a_split(tmp_path, capsys):
  out = show.main(
    ["samples", "--dataset", "synthetic", "--split", "validation"]
    + ["--val-size", "100", "--per-class", "3", "--output"]
    + [str(tmp_path / "grid.png")]
  )
  assert out == tmp_path / "grid.png"
  width, height = Image.open(out).size
  assert width > height  # 10 class columns, 3 rows
  assert "30 validation images of 10 classes" in capsys.readouterr().out


def test_many_classes_get_one_row_each(tmp_path):
  split = data.synthetic_split(150, num_classes=25)
  names = [f"c{i}" for i in range(25)]
  show.plot_samples(split, names, tmp_path / "rows.png", per_class=2)
  width, height = Image.open(tmp_path / "rows.png").size
  assert height > width


def test_curves_of_a_finished_run(trained_workdir, tmp_path, unchanged):
  kept = {
    name: (trained_workdir / name).read_bytes()
    for name in ("curves.png", "metrics.csv")
  }
  out = show.main(["curves", "--workdir", str(trained_workdir)])
  assert out == trained_workdir / "eval" / "curves.png"
  assert Image.open(out).size[0] > 0
  for name, content in kept.items():  # training's own files stay as they were
    assert (trained_workdir / name).read_bytes() == content
  with unchanged(trained_workdir):
    show.main(
      ["curves", "--workdir", str(trained_workdir), "--output"]
      + [str(tmp_path / "c.png"), "--title", "smoke"]
    )
  assert (tmp_path / "c.png").is_file()


@pytest.mark.parametrize(
  "args, expected",
  [
    (["samples", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["samples", "--split", "val"], "--split: invalid choice: 'val'"),
    (["samples", "--per-class", "0"], "--per-class: must be a positive"),
    (["plot"], "argument command: invalid choice: 'plot'"),
    (["curves", "--workdir", "{run}/nope"], "workdir .*nope does not exist"),
    (["curves", "--workdir", "{empty}"], "metrics.csv does not exist"),
    (["curves", "--workdir", "{header}"], "metrics.csv has no epochs yet"),
    (
      ["curves", "--workdir", "{run}", "--output", "{empty}/c.jpg"],
      "must be a .png file",
    ),
  ],
)
def test_bad_input_fails_clearly_and_changes_nothing(
  trained_workdir, tmp_path, args, expected, cli_error, unchanged
):
  (tmp_path / "empty").mkdir()
  (tmp_path / "header").mkdir()
  (tmp_path / "header" / "metrics.csv").write_text("epoch,loss\n")
  paths = {
    "run": trained_workdir,
    "empty": tmp_path / "empty",
    "header": tmp_path / "header",
  }
  args = [a.format(**paths) for a in args]
  with unchanged(trained_workdir), unchanged(tmp_path):
    message = cli_error(show.main, args)
  assert re.search(expected, message), message
