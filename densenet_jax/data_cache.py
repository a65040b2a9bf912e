"""Decoded splits kept as .npy files, so that only the first start decodes.

`tfds.data_source` decodes each CIFAR image from PNG in Python (about 2,000
images a second: half a minute for CIFAR-10). The decoded train and test
splits, already in the original file order, are saved once as uint8/int32
.npy files in `densenet_jax-decoded/` inside the prepared data set's folder
(e.g. `~/tensorflow_datasets/cifar10/3.0.2/densenet_jax-decoded/`), where
they are found by every data dir user and removed with the data set.

`key.json` in that folder records what the arrays were decoded from: the
data set's name and version, and per split its number of examples and each
file's name, size and modification time. A cache whose key differs from the
source's is never used (it is decoded again and replaced), and a source that
names no files on disk (mocks, fakes) is never cached. The folder is written
under a temporary name and renamed into place, so an interrupted write leaves
no half cache; a cache that cannot be written (a read-only data dir, a full
disk) is simply not written.

`DENSENET_JAX_DATA_CACHE=0` turns the cache off; a folder path puts caches
there instead (`<folder>/<name>/<version>/`), e.g. for read-only data dirs.
"""

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

ENV = "DENSENET_JAX_DATA_CACHE"
FOLDER = "densenet_jax-decoded"
_FORMAT = 1  # bump when what is decoded, or how it is ordered, changes
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


def enabled(cache: bool | None = None) -> bool:
  """`cache` if given, else whether the environment leaves the cache on."""
  if cache is not None:
    return cache
  return os.environ.get(ENV, "").strip().lower() not in _OFF


def _split_key(source) -> dict | None:
  """What one split's decoded arrays depend on, or None if unknown."""
  info = getattr(source, "dataset_info", None)
  try:
    instructions = info.splits[str(source.split)].file_instructions
    files = []
    for instruction in instructions:
      stat = os.stat(instruction.filename)
      files.append(
        [
          os.path.basename(instruction.filename),
          int(instruction.skip),
          int(instruction.take),
          stat.st_size,
          stat.st_mtime_ns,
        ]
      )
  except (AttributeError, KeyError, TypeError, OSError):
    return None
  if not files:
    return None
  return {"num_examples": len(source), "files": files}


def source_key(sources: dict) -> dict | None:
  """The key of {split name: TFDS source}: format, data set, version and
  each split's size and files; None when a source names no files on disk."""
  splits = {name: _split_key(source) for name, source in sources.items()}
  if not splits or None in splits.values():
    return None
  first = next(iter(sources.values()))
  return {
    "format": _FORMAT,
    "dataset": str(first.dataset_info.full_name),
    "splits": splits,
  }


def folder(sources: dict) -> pathlib.Path:
  """Where the cache of these sources lives: beside their first file, or
  under the folder named by the environment."""
  first = next(iter(sources.values()))
  root = os.environ.get(ENV, "").strip()
  if root and root.lower() not in _ON + _OFF:
    return pathlib.Path(root).expanduser() / first.dataset_info.full_name
  split = first.dataset_info.splits[str(first.split)]
  return pathlib.Path(split.file_instructions[0].filename).parent / FOLDER


def read(sources: dict) -> dict | None:
  """{split: (images, labels)} from the cache if it matches the sources,
  else None (no cache, another source, an unreadable or damaged file)."""
  key = source_key(sources)
  if key is None:
    return None
  where = folder(sources)
  try:
    if json.loads((where / "key.json").read_text()) != key:
      return None
    arrays = {}
    for split, split_key in key["splits"].items():
      images = np.load(where / f"{split}_images.npy", mmap_mode=None)
      labels = np.load(where / f"{split}_labels.npy", mmap_mode=None)
      n = split_key["num_examples"]
      if len(images) != n or len(labels) != n:
        return None
      if images.dtype != np.uint8 or labels.dtype != np.int32:
        return None
      arrays[split] = (images, labels)
  except (OSError, ValueError):
    return None
  return arrays


def write(sources: dict, arrays: dict) -> bool:
  """Saves {split: (images, labels)} decoded from `sources`; False, and
  nothing left behind, when the cache cannot be written."""
  key = source_key(sources)
  if key is None:
    return False
  where = folder(sources)
  temporary = None
  try:
    where.parent.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(
      tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=where.parent)
    )
    for split, (images, labels) in arrays.items():
      np.save(temporary / f"{split}_images.npy", images)
      np.save(temporary / f"{split}_labels.npy", labels)
    (temporary / "key.json").write_text(json.dumps(key, indent=1))
    os.chmod(temporary, 0o755)  # mkdtemp's 0o700 would hide it from others
    if where.exists():  # a stale cache: moved aside, then removed
      stale = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{FOLDER}-stale-", dir=where.parent)
      )
      os.rename(where, stale / FOLDER)
      shutil.rmtree(stale, ignore_errors=True)
    os.rename(temporary, where)
    return True
  except OSError:  # read-only, full, or another process was first
    if temporary is not None:
      shutil.rmtree(temporary, ignore_errors=True)
    return False
