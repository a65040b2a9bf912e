"""Class names and top-k probabilities from a trained checkpoint.

    python -m densenet_jax.predict --workdir runs/reference cat.jpg dog.png
    python -m densenet_jax.predict --workdir runs/reference --num 10

Image files of any size and mode are converted as `densenet_jax.images`
describes: RGB (grayscale expanded, transparency over white), the centre
square, resized to 32x32. Every file is read before the model runs, so one
unreadable file stops the command at once. Without files, the first --num
images of the test split are classified next to their true labels, as in the
tutorial's prediction loop.
"""

import numpy as np

from densenet_jax import cli, data, images, inference


def top_k(probs: np.ndarray, class_names, k: int) -> list[list]:
  """[[(class name, probability), ...k best], ...] for each row."""
  order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  return [
    [(class_names[c], float(p[c])) for c in row] for p, row in zip(probs, order)
  ]


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.predict",
    description="Classify image files, or the first test images, with a "
    "trained checkpoint.",
  )
  cli.add_checkpoint_arguments(parser)
  parser.add_argument(
    "images",
    nargs="*",
    metavar="IMAGE",
    help="image files (PNG, JPEG, ...: any size and mode); none: the first "
    "--num images of --split",
  )
  parser.add_argument(
    "--top-k", type=cli.positive_int, default=3, help="classes shown (3)"
  )
  parser.add_argument(
    "--num",
    type=cli.positive_int,
    default=10,
    help="without image files: how many split images (10)",
  )
  parser.add_argument("--split", choices=data.SPLITS, default="test")
  parser.add_argument("--data-dir", help="TFDS data dir (default: the run's)")
  parser.add_argument("--batch-size", type=cli.positive_int)
  return parser.parse_args(argv)


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  pixels = images.read_images(args.images) if args.images else None
  model = inference.load(args.workdir, args.checkpoint)
  k = min(args.top_k, model.num_classes)
  if pixels is not None:
    best = top_k(model.predict(pixels, args.batch_size), model.class_names, k)
    width = max(len(p) for p in args.images)
    for path, row in zip(args.images, best):
      print(f"{path:<{width}}  " + "  ".join(f"{c} {p:.3f}" for c, p in row))
    return [
      {"image": path, "top_k": row} for path, row in zip(args.images, best)
    ]

  config = model.config
  dataset = data.load_for(config, data_dir=args.data_dir)
  split = dataset.splits[args.split]
  n = min(args.num, len(split))
  probs = model.predict(split.images[:n], args.batch_size)
  best = top_k(probs, dataset.class_names, k)
  width = max(len(c) for c in dataset.class_names)
  results = []
  for i, (label, row) in enumerate(zip(split.labels[:n], best)):
    true = dataset.class_names[label]
    right = row[0][0] == true
    others = ", ".join(f"{c} {p:.3f}" for c, p in row[1:])
    print(
      f"{args.split}[{i}]  true {true:<{width}}  predicted {row[0][0]:<{width}}"
      f" {row[0][1]:.3f}  {'right' if right else 'WRONG'}"
      + (f"  ({others})" if others else "")
    )
    results.append({"index": i, "label": true, "top_k": row})
  correct = sum(r["label"] == r["top_k"][0][0] for r in results)
  print(f"{correct}/{n} right")
  return results


if __name__ == "__main__":
  main()
