"""The side-by-side runs of experiments/side_by_side.sh as one table.

    python experiments/side_by_side_table.py [experiments/results/side_by_side]

Reads keras_seed*/metrics.csv (the tutorial in tf_keras) and
jax_seed*/metrics.csv (the reference recipe) and prints, as markdown, per
epoch and seed, the training loss and accuracy (running means over the
epoch's augmented batches, as Keras' fit reports them) and the validation
loss and accuracy on the 5,000 validation images, then the spread between
seeds beside the difference between the two implementations.
"""

import csv
import pathlib
import statistics
import sys

COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy")


def read(path: pathlib.Path) -> list[dict]:
  with path.open() as f:
    return [
      {k: float(row[k]) for k in ("epoch",) + COLUMNS}
      for row in csv.DictReader(f)
    ]


def main(folder: pathlib.Path) -> str:
  runs = {}
  for impl in ("keras", "jax"):
    for path in sorted(folder.glob(f"{impl}_seed*/metrics.csv")):
      seed = int(path.parent.name.rsplit("seed", 1)[1])
      runs[(impl, seed)] = read(path)
  lines = [
    "| implementation | seed | epoch | train loss | train acc | val loss "
    "| val acc |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for (impl, seed), rows in sorted(runs.items()):
    for row in rows:
      lines.append(
        f"| {impl} | {seed} | {int(row['epoch'])} | {row['loss']:.4f} | "
        f"{row['accuracy']:.4f} | {row['val_loss']:.4f} | "
        f"{row['val_accuracy']:.4f} |"
      )
  summary = [
    "",
    "| epoch | measure | keras mean | jax mean | keras seed spread "
    "| jax seed spread |",
    "|---:|---|---:|---:|---:|---:|",
  ]
  epochs = sorted({int(r["epoch"]) for rows in runs.values() for r in rows})
  for epoch in epochs:
    for column in COLUMNS:
      values = {
        impl: [
          r[column]
          for (i, _), rows in runs.items()
          if i == impl
          for r in rows
          if int(r["epoch"]) == epoch
        ]
        for impl in ("keras", "jax")
      }
      if not all(values.values()):
        continue
      spread = {k: max(v) - min(v) for k, v in values.items()}
      summary.append(
        f"| {epoch} | {column} | {statistics.mean(values['keras']):.4f} | "
        f"{statistics.mean(values['jax']):.4f} | {spread['keras']:.4f} | "
        f"{spread['jax']:.4f} |"
      )
  return "\n".join(lines + summary) + "\n"


if __name__ == "__main__":
  folder = pathlib.Path(
    sys.argv[1] if len(sys.argv) > 1 else "experiments/results/side_by_side"
  )
  table = main(folder)
  print(table)
