"""A trained model from a workdir, ready to run on numpy images.

    import densenet_jax
    model = densenet_jax.load("runs/reference")  # the best checkpoint
    probs = model.predict(images)  # uint8 (N, 32, 32, 3) -> (N, classes)
    model.class_names[probs[0].argmax()]

`load` reads the run's config.json and only the model's variables (params
and batch_stats, or their moving average when the run kept one) of its
checkpoint, read-only: no optimizer, no training
code, nothing written to the workdir. The library behind the evaluate,
predict and summary commands.
"""

import dataclasses
import functools
import json
import pathlib

import jax
import ml_collections
import numpy as np

from densenet_jax import checkpointing, data, errors, models, validate

IMAGE_SHAPE = (32, 32, 3)
CheckpointError = checkpointing.CheckpointError


@dataclasses.dataclass(frozen=True)
class Location:
  """Where a run's files are: the workdir and one checkpoint kind in it,
  with the config the run saved."""

  workdir: pathlib.Path
  kind: str  # "best" or "latest"
  config: ml_collections.ConfigDict = dataclasses.field(
    compare=False, repr=False
  )

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.workdir / "checkpoints" / self.kind


def locate(path, kind: str | None = None) -> Location:
  """Accepts a workdir, its checkpoints/ folder, checkpoints/best|latest or
  one step folder in it; reads the config (checked) and checks that
  checkpoints are there.
  `kind` None: the checkpoint the run scored on test (its test_checkpoint;
  "best" for runs older than that field)."""
  if kind is not None:
    errors.check_choice("checkpoint", kind, checkpointing.KINDS)
  path = pathlib.Path(path).expanduser().absolute()
  if not path.exists():
    raise CheckpointError(f"workdir {path} does not exist")
  if not path.is_dir():
    raise CheckpointError(f"{path} is a file, not a workdir or checkpoint")
  if path.name.isdigit() and path.parent.name in checkpointing.KINDS:
    path, kind = path.parents[2], path.parent.name  # one step: its kind
  elif path.name in checkpointing.KINDS and path.parent.name == "checkpoints":
    path, kind = path.parents[1], path.name
  elif path.name == "checkpoints":
    path = path.parent
  if not (path / "config.json").is_file():
    if not any(path.iterdir()):
      raise CheckpointError(
        f"workdir {path} is empty: train into it first "
        f"(python -m densenet_jax.train --workdir {path})"
      )
    raise CheckpointError(
      f"{path} has no config.json: not a densenet_jax workdir"
    )
  config = read_config(path)
  if kind is None:
    kind = config.get("test_checkpoint", "best")
  where = Location(path, kind, config)
  if not where.checkpoints.is_dir():
    raise CheckpointError(
      f"{path} has no {kind} checkpoint ({where.checkpoints} is missing): "
      "training saves one at the end of its first epoch"
    )
  return where


def read_config(workdir) -> ml_collections.ConfigDict:
  """The configuration a run saved in WORKDIR/config.json, checked."""
  path = pathlib.Path(workdir) / "config.json"
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, ValueError) as err:
    raise CheckpointError(f"cannot read {path}: {err}") from None
  for key, known in (("model", models.PRESETS), ("dataset", data.DATASETS)):
    if config.get(key) not in known:
      raise CheckpointError(
        f"{path} names {key} {config.get(key)!r}; known: {', '.join(known)}"
      )
  try:
    validate.config(config)
  except errors.UserError as err:
    raise CheckpointError(f"{path}: {err}") from None
  return config


def check_images(images) -> np.ndarray:
  """(N, 32, 32, 3) or one (32, 32, 3) uint8 RGB array, else UserError."""
  images = np.asarray(images)
  batch = images[None] if images.shape == IMAGE_SHAPE else images
  if batch.shape[1:] != IMAGE_SHAPE:
    raise errors.UserError(
      f"images have shape {images.shape}; expected (N, 32, 32, 3) RGB "
      "(densenet_jax.images.read_images converts and resizes image files)"
    )
  images = batch
  if images.dtype != np.uint8:
    raise errors.UserError(
      f"images are {images.dtype}; expected uint8 in 0..255 as in training"
    )
  return images


@functools.partial(jax.jit, static_argnums=(0, 3))
def _logits(module, variables, images, tta):
  return models.eval_logits(module.apply, variables, images, tta)


class Model:
  """A DenseNet with its trained variables, class names and provenance."""

  def __init__(self, module, variables, config, class_names, checkpoint, meta):
    self.module = module
    # {"params": ..., "batch_stats": ...}: the moving average of the
    # weights when the run kept one, as training's validation and test.
    self.variables = variables
    self.config = config  # the run's ConfigDict
    self.class_names = list(class_names)
    self.checkpoint = checkpoint  # WORKDIR/checkpoints/KIND/STEP
    self.meta = meta  # the checkpoint's epoch history and counters

  @property
  def tta(self) -> models.TTA:
    """The views whose logits are averaged, as in the run's evaluation."""
    return models.TTA.of(self.config)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def step(self) -> int:
    return int(self.checkpoint.name)

  def logits(self, images, batch_size: int | None = None) -> np.ndarray:
    """Logits (N, classes) of uint8 images (N, 32, 32, 3), in batches of at
    most `batch_size` (default: the run's eval_batch_size)."""
    images = check_images(images)
    if batch_size is None:
      batch_size = self.config.eval_batch_size
    if not isinstance(batch_size, int) or batch_size <= 0:
      raise errors.UserError(f"batch size {batch_size!r} must be positive")
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      # Pad to a power of two (or batch_size): few shapes, few compilations.
      size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
      padded = np.zeros((size,) + IMAGE_SHAPE, np.uint8)
      padded[: len(chunk)] = chunk
      logits = _logits(self.module, self.variables, padded, self.tta)
      out.append(np.asarray(logits)[: len(chunk)])
    if not out:
      return np.zeros((0, self.num_classes), np.float32)
    return np.concatenate(out)

  def predict(self, images, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, classes), the softmax of the logits."""
    return np.asarray(jax.nn.softmax(self.logits(images, batch_size), -1))


def load(path, kind: str | None = None, step: int | None = None) -> Model:
  """Loads the newest `kind` ("best" or "latest"; None: the one the run
  scored on test) checkpoint of a workdir (or of the checkpoint folder
  given), or its `step`, with the config saved beside it."""
  return load_at(locate(path, kind), step)


def load_at(where: Location, step: int | None = None) -> Model:
  """load's model from a located checkpoint folder: its newest checkpoint
  or its `step`."""
  config = where.config
  names = data.class_names(config.dataset)
  module = models.from_config(config, len(names))
  what = (
    f"model {config.model!r} with {len(names)} classes "
    f"({config.dataset}), as {where.workdir / 'config.json'} says"
  )
  expected = models.variable_shapes(module)
  ema = bool(config.get("ema_decay", 0.0))
  if ema:  # training validated and tested the average: so do we
    expected = {"ema": expected}
  variables, meta, step_dir = checkpointing.restore_variables(
    where.checkpoints, expected, what, step
  )
  if ema:
    variables = variables["ema"]
  variables = jax.device_put(variables)
  return Model(module, variables, config, names, step_dir, meta)


def num_parameters(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def size_on_disk(path) -> int:
  """Bytes of all files under `path`."""
  return sum(
    p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file()
  )
