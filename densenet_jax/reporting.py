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
)


def write_metrics_csv(path, history: list[dict]) -> None:
  """Rewrites the whole file, so it always matches the checkpointed history."""
  path = pathlib.Path(path)
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
  tmp.replace(path)


def read_metrics_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return [
      {k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
      for row in csv.DictReader(f)
    ]


def plot_curves(history: list[dict], path, title: str = "") -> None:
  """Saves the tutorial's plot: loss and accuracy, training and validation."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  epochs = [row["epoch"] for row in history]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
    for key in COLUMNS[1:]:
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
