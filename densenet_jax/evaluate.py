"""Scores a trained checkpoint on a split: loss, accuracy, per-class accuracy,
a confusion matrix and images/s.

    python -m densenet_jax.evaluate --workdir runs/reference [--split test]

Restores the checkpoint the run scored on test (its test_checkpoint: the
best by default; --checkpoint chooses), params and batch_stats only, with
the config.json saved beside it, reads the split as training did (same val_size
and train_size), and runs a jit-compiled masked eval in which every image
counts once: on the test split it reproduces the test_accuracy that training
wrote to test_result.json. Writes {kind}_{split}.json and
{kind}_{split}_confusion.png into WORKDIR/eval/ (or --output), never over
the training artefacts.

    python -m densenet_jax.evaluate --workdir runs/cpu90 --kept

scores instead every checkpoint that training kept (keep_every_epochs) on
the test split, after the run: the curve of test accuracy against wall time
that test_every_epochs draws, without its scoring in the run's time.
Writes kept_test.csv (the run's metrics, test columns filled for the kept
epochs) and kept_test_curves.png.
"""

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from densenet_jax import (
  checkpointing,
  cli,
  data,
  errors,
  inference,
  reporting,
  steps,
  validate,
)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def eval_sums(module, variables, batch: dict, num_classes: int, tta) -> dict:
  """steps.eval_sums of one batch on one device, with the confusion matrix."""
  return steps.eval_sums(module.apply, variables, batch, tta, num_classes)


def model_sums(model: inference.Model, batch: dict) -> dict:
  """eval_sums of a loaded model's views of one batch."""
  return eval_sums(
    model.module, model.variables, batch, model.num_classes, model.tta
  )


def sum_batches(sums_fn, batches) -> dict:
  """The sums `sums_fn` computes for each batch, added up and fetched to the
  host (which waits for the last batch)."""
  totals = None
  for batch in batches:
    sums = sums_fn(batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.device_get(totals)


def scores(totals: dict) -> dict:
  """Mean loss and accuracy of summed float32 totals, and their count."""
  return {
    "loss": float(totals["loss"] / totals["count"]),
    "accuracy": float(totals["correct"] / totals["count"]),
    "count": int(totals["count"]),
  }


def evaluate_state(p_eval, state, split: data.Split, batch_size: int) -> dict:
  """Loss and accuracy of a replicated train state over every example of
  `split`, each counted once, with the pmapped steps.eval_step `p_eval`.

  `batch_size` is global: each process feeds its rows of every batch to its
  devices, and the step's psum adds up all processes' sums."""
  batches = data.eval_batches(
    split, batch_size, jax.process_index(), jax.process_count()
  )
  num_devices = jax.local_device_count()
  totals = sum_batches(
    lambda batch: p_eval(state, data.shard(batch, num_devices)), batches
  )
  return scores(jax.tree.map(lambda x: x[0], totals))


def evaluate(model: inference.Model, split: data.Split, batch_size: int):
  """Scores of `model` on every image of `split`; images/s excludes the
  compilation, which a warm-up batch pays for (`compile_s`)."""

  sums = functools.partial(model_sums, model)
  first = next(data.eval_batches(split, batch_size))
  start = time.perf_counter()
  jax.block_until_ready(sums(first))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  totals = sum_batches(sums, data.eval_batches(split, batch_size))
  seconds = time.perf_counter() - start
  confusion = np.asarray(totals["confusion"], np.int64)
  per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
  result = scores(totals)  # as training's: equal to its numbers
  return {
    "loss": result["loss"],
    "accuracy": result["accuracy"],
    "examples": result["count"],
    "per_class_accuracy": dict(zip(model.class_names, per_class.tolist())),
    "confusion_matrix": confusion.tolist(),
    "images_per_s": len(split) / seconds,
    "compile_s": compile_s,
    "batch_size": batch_size,
    "device": jax.devices()[0].device_kind,  # jit runs on the first device
  }


def evaluate_kept(workdir, split: data.Split, batch_size: int) -> list[dict]:
  """The history of the run in `workdir` (its newest checkpoint's) with
  test_loss and test_accuracy, on `split`, for each epoch whose end
  training kept a checkpoint of (keep_every_epochs), as training writes
  them in the epochs it scores (test_every_epochs): the same weights and
  eval, so the same numbers."""
  where = inference.locate(workdir, "latest")
  history, scored = [], {}
  for step in tqdm(
    checkpointing.kept_steps(where.checkpoints), desc="kept checkpoints"
  ):
    model = inference.load_at(where, step)
    history = model.meta["history"]  # at the end: the newest checkpoint's
    if model.meta.get("partial") or not history:
      continue  # saved on an interruption mid-epoch: no epoch of its own
    sums = sum_batches(
      functools.partial(model_sums, model), data.eval_batches(split, batch_size)
    )
    scored[history[-1]["epoch"]] = scores(sums)
  rows = [dict(row) for row in history]
  for row in rows:
    if row["epoch"] in scored:
      row["test_loss"] = scored[row["epoch"]]["loss"]
      row["test_accuracy"] = scored[row["epoch"]]["accuracy"]
  return rows


def plot_confusion(confusion, class_names, path, title: str = "") -> None:
  """Counts per (true, predicted) class pair; the diagonal is correct."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  confusion = np.asarray(confusion)
  n = len(class_names)
  side = max(5.0, 0.5 * n + 2)
  fig, ax = plt.subplots(figsize=(side, side * 0.9))
  im = ax.imshow(confusion, cmap="Blues")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ticks = np.arange(n)
  ax.set_xticks(ticks, class_names, rotation=90 if n > 10 else 45, ha="right")
  ax.set_yticks(ticks, class_names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  if n <= 20:  # readable counts in each cell
    threshold = confusion.max() / 2
    for (i, j), count in np.ndenumerate(confusion):
      color = "white" if count > threshold else "black"
      ax.text(j, i, str(count), ha="center", va="center", color=color, size=8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _training_test_result(model: inference.Model, dataset: str):
  """test_result.json of the run, if it scored this very checkpoint."""
  path = model.checkpoint.parents[2] / "test_result.json"
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  same = (
    result.get("checkpoint_step") == model.step
    and model.checkpoint.parent.name == result.get("checkpoint", "best")
    and dataset == model.config.dataset
  )
  return result if same else None


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.evaluate",
    description="Score a trained checkpoint on a data split.",
  )
  cli.add_checkpoint_arguments(parser)
  parser.add_argument("--split", choices=data.SPLITS, default="test")
  parser.add_argument(
    "--dataset", help="TFDS name (default: the one the run trained on)"
  )
  parser.add_argument(
    "--data-dir", help="TFDS data dir (default: the run's, or TFDS's)"
  )
  parser.add_argument(
    "--batch-size",
    type=cli.positive_int,
    help="eval batch (default: the run's eval_batch_size)",
  )
  parser.add_argument(
    "--tta-translate-px",
    type=cli.non_negative_int,
    help="also average the logits of the images moved this many pixels "
    "each way diagonally (default: the run's tta_translate_px)",
  )
  parser.add_argument(
    "--kept",
    action="store_true",
    help="score every checkpoint training kept in checkpoints/latest "
    "(keep_every_epochs) on the test split: kept_test.csv and "
    "kept_test_curves.png, test accuracy against the run's wall time",
  )
  parser.add_argument(
    "--output", help="folder for the JSON and PNG (default: WORKDIR/eval)"
  )
  args = parser.parse_args(argv)
  if args.kept and (
    args.split != "test"
    or args.dataset
    or args.tta_translate_px is not None
    or args.checkpoint
  ):
    parser.error(
      "--kept scores the test split as training does, with the checkpoints "
      "it kept: no --split, --dataset, --tta-translate-px or --checkpoint "
      "with it"
    )
  return args


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  if args.kept:
    return _score_kept(args)
  if args.dataset:
    validate.name("dataset", args.dataset)
  model = inference.load(args.workdir, args.checkpoint)
  config = model.config
  name = args.dataset or config.dataset
  dataset = data.load_for(config, name, args.data_dir)
  if dataset.num_classes != model.num_classes:
    raise errors.UserError(
      f"dataset {name} has {dataset.num_classes} classes, the model of "
      f"{model.checkpoint} {model.num_classes}"
    )
  model.class_names = dataset.class_names
  as_trained = args.tta_translate_px in (None, model.tta.translate_px)
  if not as_trained:
    model.config.tta_translate_px = args.tta_translate_px
  batch_size = args.batch_size or config.eval_batch_size
  workdir = model.checkpoint.parents[2]
  out = pathlib.Path(args.output) if args.output else workdir / "eval"
  stem = f"{model.checkpoint.parent.name}_{args.split}"  # best_test
  if not as_trained:
    stem += f"_translate{args.tta_translate_px}"
  result = {
    # Relative to the workdir: results stay readable where they are copied.
    "checkpoint": str(model.checkpoint.relative_to(workdir)),
    "step": model.step,
    "model": config.model,
    "dataset": name,
    "split": args.split,
    "tta": model.tta._asdict(),
    **evaluate(model, dataset.splits[args.split], batch_size),
  }
  trained = None
  if args.split == "test" and as_trained:
    trained = _training_test_result(model, name)
  if trained:
    result["training_test_accuracy"] = trained["test_accuracy"]
  _print(result, model.class_names, trained)
  try:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion(
      result["confusion_matrix"],
      model.class_names,
      out / f"{stem}_confusion.png",
      f"{config.model} on {name} {args.split}: accuracy "
      f"{result['accuracy']:.4f} (step {model.step})",
    )
  except OSError as err:
    raise errors.UserError(
      f"cannot write results to {out}: {err.strerror}; pass --output DIR"
    ) from None
  print(f"wrote {out / stem}.json and {out / stem}_confusion.png")
  return result


def _score_kept(args) -> list[dict]:
  where = inference.locate(args.workdir, "latest")
  config = where.config
  dataset = data.load_for(config, data_dir=args.data_dir)
  rows = evaluate_kept(
    where.workdir,
    dataset.splits["test"],
    args.batch_size or config.eval_batch_size,
  )
  out = pathlib.Path(args.output) if args.output else where.workdir / "eval"
  try:
    out.mkdir(parents=True, exist_ok=True)
    reporting.write_metrics_csv(out / "kept_test.csv", rows)
    reporting.plot_curves(
      rows,
      out / "kept_test_curves.png",
      f"{config.model} on {config.dataset}, kept checkpoints",
    )
  except OSError as err:
    raise errors.UserError(
      f"cannot write results to {out}: {err.strerror}; pass --output DIR"
    ) from None
  for row in rows:
    if "test_accuracy" in row:
      print(
        f"epoch {row['epoch']} ({row['wall_time_s'] / 60:.1f} min): test "
        f"accuracy {row['test_accuracy']:.4f}, loss {row['test_loss']:.4f}"
      )
  print(f"wrote {out / 'kept_test.csv'} and {out / 'kept_test_curves.png'}")
  return rows


def _print(result, class_names, trained) -> None:
  print(
    f"checkpoint {result['checkpoint']} (step {result['step']}): "
    f"{result['model']} on {result['dataset']} {result['split']}, "
    f"{result['examples']} images"
  )
  print(f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}")
  if trained:
    equal = trained["test_accuracy"] == result["accuracy"]
    print(
      f"  training reported test accuracy {trained['test_accuracy']!r} for "
      f"this checkpoint: {'equal' if equal else 'DIFFERENT'}"
    )
  print("per-class accuracy:")
  width = max(len(n) for n in class_names)
  rows = result["confusion_matrix"]
  for i, (name, acc) in enumerate(result["per_class_accuracy"].items()):
    print(f"  {name:<{width}}  {acc:.4f}  ({rows[i][i]}/{sum(rows[i])})")
  print(
    f"{result['images_per_s']:,.0f} images/s on {result['device']}, batch "
    f"{result['batch_size']} (compilation, {result['compile_s']:.1f} s, "
    "excluded)"
  )


if __name__ == "__main__":
  main()
