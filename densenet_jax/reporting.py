"""Per-epoch metrics to CSV, TensorBoard and a matplotlib plot of the curves."""

import csv
import json
import pathlib

COLUMNS = (
  "epoch",
  "loss",
  "accuracy",
  "val_loss",
  "val_accuracy",
  "learning_rate",
  "epoch_time_s",
  "wall_time_s",  # since the run started, compilation and evaluation included
  "test_loss",  # in the epochs that score the test set (test_every_epochs)
  "test_accuracy",
)


def _columns(history: list[dict]) -> list[str]:
  """The COLUMNS any row has: a row without one (an epoch that did not
  score the test set, a row written before wall_time_s existed) leaves its
  cell empty."""
  return [c for c in COLUMNS if any(c in row for row in history)]


def write_metrics_csv(path, history: list[dict]) -> None:
  """Rewrites the whole file, so it always matches the checkpointed history."""
  path = pathlib.Path(path)
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, _columns(history), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
  tmp.replace(path)


def read_metrics_csv(path) -> list[dict]:
  """The rows of a metrics.csv; an empty cell is a key the row lacks."""
  with open(path, newline="") as f:
    return [
      {k: float(v) if k != "epoch" else int(v) for k, v in row.items() if v}
      for row in csv.DictReader(f)
    ]


def plot_curves(history: list[dict], path, title: str = "") -> None:
  """Saves the tutorial's plot: loss and accuracy, training and validation;
  with test scores during training, a third panel: accuracy against wall
  time."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  epochs = [row["epoch"] for row in history]
  timed = [row for row in history if "wall_time_s" in row]
  tested = [row for row in timed if "test_accuracy" in row]
  panels = 3 if tested else 2
  fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
  for ax, key in zip(axes, ("loss", "accuracy")):
    ax.plot(epochs, [row[key] for row in history], "o-", label=f"train {key}")
    ax.plot(
      epochs,
      [row[f"val_{key}"] for row in history],
      "o-",
      label=f"validation {key}",
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  if tested:
    ax = axes[2]
    for key, rows in (("val_accuracy", timed), ("test_accuracy", tested)):
      label = "validation" if key == "val_accuracy" else "test"
      minutes = [row["wall_time_s"] / 60 for row in rows]
      ax.plot(minutes, [row[key] for row in rows], "o-", label=label)
    ax.set_xlim(left=0)
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


class Reporter:
  """Writes each finished epoch to metrics.csv, TensorBoard and curves.png."""

  def __init__(self, workdir, title: str = ""):
    from tensorboardX import SummaryWriter

    self.workdir = pathlib.Path(workdir)
    self.title = title
    self.writer = SummaryWriter(str(self.workdir / "tensorboard"))

  def epoch_end(self, history: list[dict]) -> None:
    row = history[-1]
    for key in [c for c in COLUMNS[1:] if c in row]:
      self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    self.writer.flush()
    write_metrics_csv(self.workdir / "metrics.csv", history)
    plot_curves(history, self.workdir / "curves.png", self.title)

  def write_json(self, name: str, result: dict) -> None:
    with open(self.workdir / name, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")

  def close(self) -> None:
    self.writer.close()
