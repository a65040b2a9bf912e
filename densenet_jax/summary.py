"""The model's layer/parameter table, its size, and its checkpoint's size.

    python -m densenet_jax.summary --workdir runs/reference
    python -m densenet_jax.summary --model reference --depth 2

With --workdir, the run's model (from its config.json) and the size on disk
of its checkpoint, which is restored to check that it fits; with --model, a
preset alone. The table is flax's `nn.tabulate` for one 32x32 RGB image.
"""

import jax
import jax.numpy as jnp

from densenet_jax import cli, inference, models


def describe(module, depth: int = 1) -> dict:
  """The table and the parameter counts of a DenseNet module."""
  shapes = models.variable_shapes(module)
  return {
    "table": models.summary(module, inference.IMAGE_SHAPE, depth),
    "parameters": inference.num_parameters(shapes["params"]),
    "batch_statistics": inference.num_parameters(shapes["batch_stats"]),
    "dtype": jax.tree.leaves(shapes["params"])[0].dtype.name,
  }


def _megabytes(n: int) -> str:
  return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.summary",
    description="Print a model's layers, parameter count and checkpoint size.",
  )
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument("--workdir", help="a training workdir (or checkpoint)")
  which.add_argument("--model", choices=models.PRESETS, help="a preset")
  parser.add_argument(
    "--checkpoint",
    choices=("best", "latest"),
    help="with --workdir (default: the one training scored on test)",
  )
  parser.add_argument(
    "--num-classes",
    type=cli.positive_int,
    default=10,
    help="with --model: classifier outputs (10)",
  )
  parser.add_argument(
    "--depth",
    type=cli.positive_int,
    default=1,
    help="table depth: 1 blocks and transitions, 2 and more their layers",
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  model = None
  if args.workdir:
    model = inference.load(args.workdir, args.checkpoint)
    module = model.module
  else:
    module = models.create_model(args.model, num_classes=args.num_classes)
  result = describe(module, args.depth)
  print(result["table"])
  dtype = jnp.dtype(result["dtype"])
  print(
    f"parameters: {result['parameters']:,} trainable "
    f"({_megabytes(result['parameters'] * dtype.itemsize)} as {dtype}), "
    f"{result['batch_statistics']:,} batch statistics"
  )
  if model is not None:
    config = model.config
    result["checkpoint"] = str(model.checkpoint)
    result["checkpoint_bytes"] = inference.size_on_disk(model.checkpoint)
    result["checkpoints_bytes"] = inference.size_on_disk(
      model.checkpoint.parents[1]
    )
    epochs = len(model.meta.get("history", []))
    print(
      f"model {config.model!r} ({config.dtype}), {model.num_classes} classes "
      f"({config.dataset}), from {model.checkpoint.parents[2] / 'config.json'}"
    )
    print(
      f"checkpoint {model.checkpoint} (step {model.step}, after {epochs} "
      f"epochs): {_megabytes(result['checkpoint_bytes'])} on disk with the "
      f"optimizer state; all checkpoints of the run: "
      f"{_megabytes(result['checkpoints_bytes'])}"
    )
  return result


if __name__ == "__main__":
  main()
