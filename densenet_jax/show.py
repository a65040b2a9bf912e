"""Pictures of the data and of a run, as PNG files.

    python -m densenet_jax.show samples --split train --output samples.png
    python -m densenet_jax.show curves --workdir runs/reference

`samples`: --per-class (7) random images of each class of a split, one
column per class under its name, as the tutorial shows CIFAR-10 (one row per
class, name on the left, past 20 classes). `curves`: loss and accuracy,
training and validation, per epoch, from a run's metrics.csv: the plot that
training keeps in curves.png, drawn again for a finished run (with --title)
into WORKDIR/eval/curves.png or --output.
"""

import csv
import pathlib

import numpy as np

from densenet_jax import cli, data, errors, reporting, validate


def sample_indices(labels, num_classes: int, per_class: int, seed: int = 0):
  """For each class, up to `per_class` random indices of its examples."""
  rng = np.random.default_rng(seed)
  return [
    rng.permutation(np.flatnonzero(labels == c))[:per_class]
    for c in range(num_classes)
  ]


def plot_samples(split: data.Split, class_names, path, per_class=7, seed=0):
  """Saves the grid of sample images; returns the indices shown."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  chosen = sample_indices(split.labels, len(class_names), per_class, seed)
  by_row = len(class_names) > 20  # many classes: one row each
  rows, cols = (
    (len(class_names), per_class) if by_row else (per_class, len(class_names))
  )
  fig, axes = plt.subplots(
    rows, cols, figsize=(cols * 0.9 + 1, rows * 0.9 + 0.3), squeeze=False
  )
  for ax in axes.flat:
    ax.axis("off")
  for c, (name, indices) in enumerate(zip(class_names, chosen)):
    for i, index in enumerate(indices):
      ax = axes[c, i] if by_row else axes[i, c]
      ax.imshow(split.images[index], interpolation="nearest")
    first = axes[c, 0] if by_row else axes[0, c]
    if by_row:
      first.text(-2, 16, name, ha="right", va="center", size=9)
    else:
      first.set_title(name, size=9)
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return chosen


def read_history(workdir) -> list[dict]:
  """The rows of WORKDIR/metrics.csv, one per finished epoch."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise errors.UserError(f"workdir {workdir} does not exist")
  path = workdir / "metrics.csv"
  if not path.is_file():
    raise errors.UserError(
      f"{path} does not exist: no training run has finished an epoch there"
    )
  try:
    history = reporting.read_metrics_csv(path)
  except (ValueError, TypeError, KeyError, csv.Error) as err:
    raise errors.UserError(f"cannot read {path}: {err}") from None
  if not history:
    raise errors.UserError(f"{path} has no epochs yet")
  return history


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.show",
    description="Draw sample images of a data set, or a run's curves.",
  )
  commands = parser.add_subparsers(dest="command", required=True)
  samples = commands.add_parser(
    "samples", help="a grid of random images of each class"
  )
  samples.add_argument("--dataset", default="cifar10", help="cifar10 (default)")
  samples.add_argument("--split", choices=data.SPLITS, default="train")
  samples.add_argument("--data-dir", help="TFDS data dir")
  samples.add_argument(
    "--val-size",
    type=cli.positive_int,
    default=5000,
    help="the last VAL_SIZE training images form the validation split",
  )
  samples.add_argument("--per-class", type=cli.positive_int, default=7)
  samples.add_argument("--seed", type=int, default=0)
  samples.add_argument(
    "--output", help="PNG file (default: samples_DATASET_SPLIT.png)"
  )
  curves = commands.add_parser("curves", help="a run's training curves")
  curves.add_argument("--workdir", required=True)
  curves.add_argument(
    "--output", help="PNG file (default: WORKDIR/eval/curves.png)"
  )
  curves.add_argument("--title", help="default: the run's model and dataset")
  return parser.parse_args(argv)


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  if args.command == "samples":
    validate.name("dataset", args.dataset)
    validate.split_sizes({"dataset": args.dataset, "val_size": args.val_size})
    dataset = data.load(args.dataset, args.data_dir, args.val_size)
    out = pathlib.Path(
      args.output or f"samples_{args.dataset}_{args.split}.png"
    )
    split = dataset.splits[args.split]
    _check_writable(out)
    chosen = plot_samples(
      split, dataset.class_names, out, args.per_class, args.seed
    )
    print(
      f"wrote {out}: {sum(map(len, chosen))} {args.split} images of "
      f"{dataset.num_classes} classes"
    )
    return out
  workdir = pathlib.Path(args.workdir)
  history = read_history(workdir)
  out = pathlib.Path(args.output or workdir / "eval" / "curves.png")
  title = args.title
  if title is None:
    config = _saved_config(workdir)
    title = f"{config.get('model', '?')} on {config.get('dataset', '?')}"
  _check_writable(out)
  reporting.plot_curves(history, out, title)
  print(f"wrote {out}: {len(history)} epochs")
  return out


def _saved_config(workdir) -> dict:
  import json

  try:
    return json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    return {}


def _check_writable(path: pathlib.Path) -> None:
  if path.suffix.lower() != ".png":
    raise errors.UserError(f"output {path} must be a .png file")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise errors.UserError(f"cannot write {path}: {err.strerror}") from None


if __name__ == "__main__":
  main()
