"""CIFAR from TFDS into memory once, then numpy batches: no tf.data in training.

`load` reads a TFDS dataset through `tfds.data_source` (array_record
files; TFDS downloads and prepares the data set the first time, which needs
TensorFlow) and returns uint8 images and int32 labels for three splits:
the first `train_size` training images, the last `val_size` training images
(the tutorial's validation split) and the test set. TFDS stores CIFAR
shuffled and keeps each image's position in the original files in its `id`
(`train_00042`); the splits are taken in that original order, so that "the
last 5,000" are the 5,000 that Keras' `cifar10.load_data()` puts last.
"""

import dataclasses
import os
import re
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from densenet_jax import data_cache, errors

DATASETS = ("cifar10", "cifar100", "synthetic")
SYNTHETIC_SIZES = {"train": 1000, "test": 500}  # train includes validation
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


def original_order(ids) -> np.ndarray | None:
  """The permutation that sorts records by the number that ends their TFDS
  `id` (`train_00042` -> 42), i.e. into the original files' order; None if
  an id has no number (then the stored order is kept)."""
  numbers = []
  for record_id in ids:
    text = record_id.decode() if isinstance(record_id, bytes) else record_id
    match = re.search(r"(\d+)$", str(text))
    if match is None:
      return None
    numbers.append(int(match.group(1)))
  return np.argsort(np.asarray(numbers), kind="stable")


def _read_source(source, desc: str, progress: bool) -> Split:
  """Every record of a TFDS source, in the original order where it has ids."""
  shape = np.asarray(source[0]["image"]).shape
  images = np.empty((len(source),) + shape, np.uint8)
  labels = np.empty((len(source),), np.int32)
  ids = [] if "id" in source[0] else None
  bar = tqdm(
    total=len(source), desc=desc, unit="img", disable=not progress, leave=False
  )
  for start in range(0, len(source), _READ_CHUNK):
    index = list(range(start, min(start + _READ_CHUNK, len(source))))
    for i, record in zip(index, _read_records(source, index)):
      images[i] = record["image"]
      labels[i] = record["label"]
      if ids is not None:
        ids.append(record["id"])
    bar.update(len(index))
  bar.close()
  order = None if ids is None else original_order(ids)
  if order is None:
    return Split(images, labels)
  return Split(images[order], labels[order])


def _read_sources(name: str, sources: dict, progress: bool, cache) -> tuple:
  """The train and test splits from the decoded cache, else decoded from
  their TFDS sources (and then cached)."""
  use_cache = data_cache.enabled(cache)
  arrays = data_cache.read(sources) if use_cache else None
  if arrays is None:
    splits = {
      split: _read_source(source, f"reading {name} {split}", progress)
      for split, source in sources.items()
    }
    arrays = {s: (split.images, split.labels) for s, split in splits.items()}
    if use_cache:
      data_cache.write(sources, arrays)
  return Split(*arrays["train"]), Split(*arrays["test"])


def load_for(
  config, name: str | None = None, data_dir=None, progress: bool = True
) -> Dataset:
  """The data set of a run's `config`, split as it trains; `name` and
  `data_dir` (when given) instead of the config's."""
  return load(
    name or config.dataset,
    data_dir or config.data_dir,
    config.val_size,
    config.train_size,
    progress=progress,
  )


def load(
  name: str = "cifar10",
  data_dir: str | None = None,
  val_size: int = 5000,
  train_size: int | None = None,
  progress: bool = True,
  cache: bool | None = None,
) -> Dataset:
  """Loads `name` from TFDS (downloading it if needed) into memory; a
  `data_dir` ending in .npz is read with numpy instead. The decoded TFDS
  splits are cached (see data_cache) unless `cache` is False, or None and
  $DENSENET_JAX_DATA_CACHE is 0."""
  errors.check_choice("dataset", name, DATASETS)
  if name == "synthetic":
    full = synthetic_split(SYNTHETIC_SIZES["train"], seed=0)
    test = synthetic_split(SYNTHETIC_SIZES["test"], seed=1)
    class_names = numbered_class_names(SYNTHETIC_CLASSES)
  elif str(data_dir or "").endswith(".npz"):
    full, test, class_names = _load_npz(name, data_dir)
  else:
    import tensorflow_datasets as tfds  # slow import: only when data is needed

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    ensure_prepared(name, data_dir)
    sources = {
      split: tfds.data_source(name, split=split, data_dir=data_dir)
      for split in ("train", "test")
    }
    info = sources["train"].dataset_info
    class_names = list(info.features["label"].names)
    full, test = _read_sources(name, sources, progress, cache)
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
    "test": test,
  }
  return Dataset(name, splits, class_names)


# TFDS's label names (label.labels.txt of a prepared data dir), so that a
# model can name its classes without the data set at hand.
CIFAR10_CLASSES = tuple(
  "airplane automobile bird cat deer dog frog horse ship truck".split()
)
CIFAR100_CLASSES = tuple(
  """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee
clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm
""".split()
)
SYNTHETIC_CLASSES = 10


def numbered_class_names(num_classes: int) -> list[str]:
  """class0, class1, ...: the names of classes that have none."""
  return [f"class{i}" for i in range(num_classes)]


def class_names(dataset: str) -> list[str]:
  """The label names of a data set in DATASETS, in label order."""
  errors.check_choice("dataset", dataset, DATASETS)
  if dataset == "cifar10":
    return list(CIFAR10_CLASSES)
  if dataset == "cifar100":
    return list(CIFAR100_CLASSES)
  return numbered_class_names(SYNTHETIC_CLASSES)


def _load_npz(name: str, path) -> tuple:
  """Arrays x_train, y_train, x_test, y_test from an .npz file: for
  machines without TFDS."""
  try:
    arrays = np.load(path)
    full = Split(arrays["x_train"], arrays["y_train"].astype(np.int32))
    test = Split(arrays["x_test"], arrays["y_test"].astype(np.int32))
  except (OSError, KeyError) as err:
    raise errors.UserError(
      f"cannot read {name} from {path} (an .npz with x_train, y_train, "
      f"x_test, y_test): {err}"
    ) from err
  num_classes = int(max(full.labels.max(), test.labels.max())) + 1
  if name == "cifar10" and num_classes <= 10:
    return full, test, list(CIFAR10_CLASSES)
  return full, test, numbered_class_names(num_classes)


DOWNLOAD_URLS = {
  "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
  "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
}
_PROBE_TIMEOUT_S = 10


def _reachable(url: str) -> bool:
  """Whether a TCP connection to the URL's host opens within seconds (name
  resolution included, which has no timeout of its own: hence the thread)."""
  import socket
  import threading
  import urllib.parse

  host = urllib.parse.urlparse(url).hostname
  result = []

  def probe():
    try:
      socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_PROBE_TIMEOUT_S)
  return bool(result)


def _mocked(builder) -> bool:
  """True under tfds.testing.mock_data, which downloads nothing."""
  method = type(builder).download_and_prepare
  return method.__module__.startswith("tensorflow_datasets.testing")


def ensure_prepared(name: str, data_dir: str | None) -> None:
  """Downloads and prepares `name` unless `data_dir` holds it; without a
  network, fails within seconds (TFDS would retry for minutes) with the way
  to prepare the data offline."""
  import tensorflow_datasets as tfds
  from absl import logging

  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # no warning about a missing dir
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared() or _mocked(builder):
      return
  finally:
    logging.set_verbosity(verbosity)
  where = data_dir or "~/tensorflow_datasets"
  url = DOWNLOAD_URLS[name]
  offline = (
    f"copy {url.rsplit('/', 1)[1]} (or an image folder) to this machine and "
    f"run: python -m densenet_jax.prepare_data SOURCE --data-dir {where}"
  )
  if not _reachable(url):
    raise errors.UserError(
      f"{name} is not in data dir {where} and could not be downloaded "
      f"({url} is unreachable); {offline}"
    )
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as err:  # any download or preparation failure
    message = str(err).strip().splitlines() or [type(err).__name__]
    raise errors.UserError(
      f"{name} is not in data dir {where} and could not be downloaded "
      f"({message[0][:200]}); {offline}"
    ) from err


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch: 45,000 // 128 = 351, the tutorial's count."""
  return num_examples // batch_size


def _check_divides(what: str, size: int, parts: int, unit: str) -> None:
  """A batch (`what`, e.g. "batch size 8") must split into equal parts."""
  if size % parts:
    raise errors.ConfigError(
      f"{what} does not divide over {parts} {unit}; use a multiple of {parts}"
    )


def check_batch_sizes(config, num_devices: int) -> None:
  """Global batch sizes must be positive and split evenly over all devices."""
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if not isinstance(value, int) or value <= 0:
      raise errors.ConfigError(f"{name}={value!r} must be a positive integer")
    _check_divides(f"{name}={value}", value, num_devices, "devices")


def _process_slice(batch_size: int, process_index: int, process_count: int):
  """The rows of a global batch that one process feeds to its devices."""
  _check_divides(
    f"batch size {batch_size}", batch_size, process_count, "processes"
  )
  per_process = batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def train_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  start_step: int = 0,
  num_steps: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict]:
  """Yields this process's part of each shuffled global batch of one epoch.

  The order depends only on (seed, epoch), so a resumed run sees exactly the
  batches an uninterrupted one would, whatever the process count. Each batch
  carries `index`, the example's position in the global batch, which keys its
  augmentation: the same example is augmented the same way on any topology,
  and `flip`, for alternating flips: a random bit per example in epoch 0,
  flipped in every later epoch.
  """
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  # A stream of its own ([seed], not [seed, epoch]): the same in every epoch.
  first_flips = np.random.default_rng([seed]).integers(0, 2, len(split))
  flips = (first_flips ^ (epoch % 2)).astype(np.uint8)
  num_steps = num_steps or steps_per_epoch(len(split), batch_size)
  rows = _process_slice(batch_size, process_index, process_count)
  positions = np.arange(batch_size, dtype=np.int32)[rows]
  for step in range(start_step, num_steps):
    # With more steps than fit in one permutation, wrap around.
    idx = np.take(order, step * batch_size + positions, mode="wrap")
    yield {
      "image": split.images[idx],
      "label": split.labels[idx],
      "index": positions,
      "flip": flips[idx],
    }


def eval_batches(
  split: Split, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict]:
  """Yields every example once, in order; the last batch is zero-padded.

  `mask` is 1 for real examples and 0 for padding, so scores computed as
  mask-weighted sums count each example exactly once. With several processes,
  each gets its rows of every global batch.
  """
  rows = _process_slice(batch_size, process_index, process_count)
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
    yield {"image": images[rows], "label": labels[rows], "mask": mask[rows]}


def synthetic_split(n: int, num_classes: int = 10, seed: int = 0) -> Split:
  """Random 32x32 RGB images whose brightness encodes the label: learnable,
  deterministic, no download (tests, benchmarks, multi-process checks)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  base = (labels * (255 // num_classes))[:, None, None, None]
  noise = rng.integers(0, 20, (n, 32, 32, 3))
  return Split(np.clip(base + noise, 0, 255).astype(np.uint8), labels)


def shard(batch: dict, num_devices: int) -> dict:
  """Reshapes each (B, ...) array to (num_devices, B / num_devices, ...)."""
  size = len(next(iter(batch.values())))
  _check_divides(f"batch size {size}", size, num_devices, "devices")
  return {
    k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()
  }
