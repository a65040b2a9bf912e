"""CIFAR from TFDS into memory once, then numpy batches: no tf.data in training.

`load_splits` reads a TFDS dataset through `tfds.data_source` (array_record
files; TFDS downloads and prepares the data set the first time, which needs
TensorFlow) and returns uint8 images and int32 labels for three splits:
the first `train_size` training images, the last `val_size` training images
(the tutorial's validation split) and the test set.
"""

import dataclasses
import os
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from densenet_jax import errors

DATASETS = ("cifar10", "cifar100")
SPLITS = ("train", "validation", "test")
_READ_CHUNK = 5000


@dataclasses.dataclass
class Split:
  """One split in memory: images (N, H, W, C) uint8, labels (N,) int32."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Dataset:
  name: str
  splits: dict  # "train" / "validation" / "test" -> Split
  class_names: list

  @property
  def num_classes(self):
    return len(self.class_names)


def _read_records(source, index):
  try:
    return source.__getitems__(index)  # one batched read: 2x faster
  except TypeError:  # sources without batched reads, e.g. tfds.testing mocks
    return [source[i] for i in index]


def _read_source(source, desc: str, progress: bool) -> Split:
  shape = np.asarray(source[0]["image"]).shape
  images = np.empty((len(source),) + shape, np.uint8)
  labels = np.empty((len(source),), np.int32)
  bar = tqdm(
    total=len(source), desc=desc, unit="img", disable=not progress, leave=False
  )
  for start in range(0, len(source), _READ_CHUNK):
    index = list(range(start, min(start + _READ_CHUNK, len(source))))
    for i, record in zip(index, _read_records(source, index)):
      images[i] = record["image"]
      labels[i] = record["label"]
    bar.update(len(index))
  bar.close()
  return Split(images, labels)


def load(
  name: str = "cifar10",
  data_dir: str | None = None,
  val_size: int = 5000,
  train_size: int | None = None,
  progress: bool = True,
) -> Dataset:
  """Loads `name` from TFDS (downloading it if needed) into memory."""
  if name not in DATASETS:
    raise errors.UserError(
      f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
    )
  import tensorflow_datasets as tfds  # slow import, only when data is needed

  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  train = tfds.data_source(name, split="train", data_dir=data_dir)
  test = tfds.data_source(name, split="test", data_dir=data_dir)
  class_names = list(train.dataset_info.features["label"].names)
  full = _read_source(train, f"reading {name} train", progress)
  if not 0 < val_size < len(full):
    raise errors.UserError(
      f"val_size={val_size} must be between 1 and {len(full) - 1} "
      f"(the {name} training set has {len(full)} images)"
    )
  n_train = len(full) - val_size if train_size is None else train_size
  if not 0 < n_train <= len(full) - val_size:
    raise errors.UserError(
      f"train_size={train_size} must be between 1 and "
      f"{len(full) - val_size} with val_size={val_size}"
    )
  splits = {
    "train": Split(full.images[:n_train], full.labels[:n_train]),
    "validation": Split(full.images[-val_size:], full.labels[-val_size:]),
    "test": _read_source(test, f"reading {name} test", progress),
  }
  return Dataset(name, splits, class_names)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch: 45,000 // 128 = 351, the tutorial's count."""
  return num_examples // batch_size


def train_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  start_step: int = 0,
  num_steps: int | None = None,
) -> Iterator[dict]:
  """Yields the shuffled full batches of one epoch, from `start_step` on.

  The order depends only on (seed, epoch), so a resumed run sees exactly the
  batches an uninterrupted one would. Each batch carries `index`, the example's
  position in the global batch, which keys its augmentation.
  """
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  num_steps = num_steps or steps_per_epoch(len(split), batch_size)
  for step in range(start_step, num_steps):
    # With more steps than fit in one permutation, wrap around.
    idx = np.take(
      order, np.arange(step * batch_size, (step + 1) * batch_size), mode="wrap"
    )
    yield {
      "image": split.images[idx],
      "label": split.labels[idx],
      "index": np.arange(batch_size, dtype=np.int32),
    }


def eval_batches(split: Split, batch_size: int) -> Iterator[dict]:
  """Yields every example once, in order; the last batch is zero-padded.

  `mask` is 1 for real examples and 0 for padding, so scores computed as
  mask-weighted sums count each example exactly once.
  """
  for start in range(0, len(split), batch_size):
    images = split.images[start : start + batch_size]
    labels = split.labels[start : start + batch_size]
    mask = np.ones(len(labels), np.float32)
    pad = batch_size - len(labels)
    if pad:
      images = np.concatenate(
        [images, np.zeros((pad,) + images.shape[1:], images.dtype)]
      )
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield {"image": images, "label": labels, "mask": mask}


def shard(batch: dict, num_devices: int) -> dict:
  """Reshapes each (B, ...) array to (num_devices, B / num_devices, ...)."""
  size = len(next(iter(batch.values())))
  if size % num_devices:
    raise errors.UserError(
      f"batch size {size} does not divide over {num_devices} devices; "
      f"use a multiple of {num_devices}"
    )
  return {
    k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()
  }
