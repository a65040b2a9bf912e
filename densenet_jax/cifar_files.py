"""CIFAR as users copy it by hand, read into memory and written back in
the official binary layout (what TFDS' cifar builders read).

Sources: the official archives (`cifar-10-binary.tar.gz`,
`cifar-10-python.tar.gz`, `cifar-100-binary.tar.gz`,
`cifar-100-python.tar.gz`) and folders or tarballs of 32x32 images laid out
as `train/<class>/*` and `test/<class>/*`. A damaged or foreign source is a
UserError naming it. The python archives are pickles: read only copies you
trust, as with any pickle.
"""

import dataclasses
import io
import pathlib
import pickle
import tarfile
import zlib

import numpy as np
from tqdm.auto import tqdm

from densenet_jax import data, errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_SIZE = 32 * 32 * 3
# CIFAR-100's 20 superclasses (alphabetical, as in the official files) and
# their 5 classes each: the coarse label of an image-folder copy.
CIFAR100_SUPERCLASSES = {
  "aquatic_mammals": "beaver dolphin otter seal whale",
  "fish": "aquarium_fish flatfish ray shark trout",
  "flowers": "orchid poppy rose sunflower tulip",
  "food_containers": "bottle bowl can cup plate",
  "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
  "household_electrical_devices": "clock keyboard lamp telephone television",
  "household_furniture": "bed chair couch table wardrobe",
  "insects": "bee beetle butterfly caterpillar cockroach",
  "large_carnivores": "bear leopard lion tiger wolf",
  "large_man-made_outdoor_things": "bridge castle house road skyscraper",
  "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
  "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
  "medium_mammals": "fox porcupine possum raccoon skunk",
  "non-insect_invertebrates": "crab lobster snail spider worm",
  "people": "baby boy girl man woman",
  "reptiles": "crocodile dinosaur lizard snake turtle",
  "small_mammals": "hamster mouse rabbit shrew squirrel",
  "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
  "vehicles_1": "bicycle bus motorcycle pickup_truck train",
  "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
COARSE_OF = {
  fine: coarse
  for coarse, fines in CIFAR100_SUPERCLASSES.items()
  for fine in fines.split()
}


@dataclasses.dataclass
class Source:
  """A copy of CIFAR in memory, in the official files' order."""

  name: str  # cifar10 or cifar100
  images: dict  # "train" / "test" -> (N, 32, 32, 3) uint8
  labels: dict  # "train" / "test" -> (N,) fine labels, uint8
  class_names: list
  coarse: dict | None = None  # cifar100: "train" / "test" -> (N,) uint8

  def counts(self, split: str) -> np.ndarray:
    return np.bincount(self.labels[split], minlength=len(self.class_names))


def _fail(source, why: str):
  raise errors.UserError(f"cannot prepare data from {source}: {why}")


class _Tar:
  """A tarball's regular files by name; damage is a UserError."""

  def __init__(self, path):
    self.path = path
    try:
      self.tar = tarfile.open(path)
      self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
      why = (str(err).splitlines() or [type(err).__name__])[0].rstrip(":")
      _fail(path, f"not a readable tar archive (truncated?): {why}")

  def find(self, suffix: str) -> str | None:
    return next((n for n in self.members if n.endswith(suffix)), None)

  def read(self, name: str) -> bytes:
    try:
      return self.tar.extractfile(self.members[name]).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
      why = (str(err).splitlines() or [type(err).__name__])[0]
      _fail(self.path, f"cannot read {name} (truncated?): {why}")


def _records(path, payload: bytes, name: str, num_labels: int):
  """Official binary records: labels, then 3072 bytes of planar RGB."""
  size = num_labels + _SIZE
  if len(payload) % size:
    _fail(path, f"{name} holds {len(payload)} bytes, not records of {size}")
  rows = np.frombuffer(payload, np.uint8).reshape(-1, size)
  images = rows[:, num_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, rows[:, :num_labels]


def _names(payload: bytes) -> list:
  return [n for n in payload.decode().split("\n") if n.strip()]


def _read_binary(tar: _Tar, root: str, hundred: bool) -> Source:
  splits = (
    {"train": ["train.bin"], "test": ["test.bin"]}
    if hundred
    else {
      "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
      "test": ["test_batch.bin"],
    }
  )
  images, labels, coarse = {}, {}, {}
  for split, files in splits.items():
    parts = [
      _records(tar.path, tar.read(root + f), f, 2 if hundred else 1)
      for f in tqdm(files, desc=f"reading {split}", leave=False)
    ]
    images[split] = np.concatenate([p[0] for p in parts])
    both = np.concatenate([p[1] for p in parts])
    labels[split], coarse[split] = both[:, -1], both[:, 0]
  if hundred:
    names = _names(tar.read(root + "fine_label_names.txt"))
    return Source("cifar100", images, labels, names, coarse)
  names = _names(tar.read(root + "batches.meta.txt"))
  return Source("cifar10", images, labels, names)


def _read_python(tar: _Tar, root: str, hundred: bool) -> Source:
  def load(name):
    try:
      return pickle.loads(tar.read(root + name), encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
      _fail(tar.path, f"{name} is not a CIFAR batch: {err}")

  files = {"train": ["train"], "test": ["test"]}
  if not hundred:
    files = {
      "train": [f"data_batch_{i}" for i in range(1, 6)],
      "test": ["test_batch"],
    }
  key = b"fine_labels" if hundred else b"labels"
  images, labels, coarse = {}, {}, {}
  for split, names in files.items():
    batches = [load(n) for n in tqdm(names, desc=f"reading {split}")]
    pixels = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
    images[split] = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels[split] = np.concatenate([b[key] for b in batches]).astype(np.uint8)
    if hundred:
      coarse[split] = np.concatenate([b[b"coarse_labels"] for b in batches])
  if hundred:
    meta = load("meta")
    names = [n.decode() for n in meta[b"fine_label_names"]]
    coarse = {k: v.astype(np.uint8) for k, v in coarse.items()}
    return Source("cifar100", images, labels, names, coarse)
  names = [n.decode() for n in load("batches.meta")[b"label_names"]]
  return Source("cifar10", images, labels, names)


def _image_files(source) -> dict:
  """{(split, class): [(name, read_bytes)]} of an image folder or tarball."""
  found = {}
  if source.is_dir():
    for path in sorted(source.rglob("*")):
      parts = path.relative_to(source).parts
      if path.suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 3:
        key = (parts[-3], parts[-2])
        found.setdefault(key, []).append((str(path), path.read_bytes))
  else:
    tar = _Tar(source)
    for name in sorted(tar.members):
      parts = name.split("/")
      if (
        pathlib.Path(name).suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 3
      ):
        key = (parts[-3], parts[-2])
        found.setdefault(key, []).append((name, lambda n=name: tar.read(n)))
  return {k: v for k, v in found.items() if k[0] in ("train", "test")}


def _read_images(source) -> Source:
  from PIL import Image

  files = _image_files(source)
  classes = {
    s: sorted(c for split, c in files if split == s)
    for s in "train test".split()
  }
  if not classes["train"] or classes["train"] != classes["test"]:
    _fail(
      source,
      "neither an official CIFAR archive nor image folders train/<class>/ "
      "and test/<class>/ with the same classes",
    )
  names = classes["train"]
  if set(names) == set(data.CIFAR10_CLASSES):
    name, names = "cifar10", list(data.CIFAR10_CLASSES)
  elif set(names) == set(COARSE_OF):
    name = "cifar100"
  else:
    _fail(
      source,
      f"its {len(names)} class folders ({', '.join(names[:4])}, ...) are "
      "neither CIFAR-10's 10 nor CIFAR-100's 100 classes",
    )
  coarse_names = list(CIFAR100_SUPERCLASSES)
  images, labels, coarse = {}, {}, {}
  for split in ("train", "test"):
    pairs = [(f, i) for i, c in enumerate(names) for f in files[(split, c)]]
    pixels = np.empty((len(pairs), 32, 32, 3), np.uint8)
    for j, ((path, read), _) in enumerate(
      tqdm(pairs, desc=f"reading {split}", unit="img")
    ):
      try:
        image = Image.open(io.BytesIO(read())).convert("RGB")
      except OSError as err:
        _fail(source, f"{path} is not a readable image: {err}")
      if image.size != (32, 32):
        _fail(source, f"{path} is {image.size[0]}x{image.size[1]}, not 32x32")
      pixels[j] = np.asarray(image)
    # Classes mixed in a fixed order, as in the official files: training
    # takes its validation images from the end of the split.
    order = np.random.default_rng(0).permutation(len(pairs))
    images[split] = pixels[order]
    labels[split] = np.array([pairs[k][1] for k in order], np.uint8)
    coarse[split] = np.array(
      [coarse_names.index(COARSE_OF[names[i]]) for i in labels[split]]
      if name == "cifar100"
      else [],
      np.uint8,
    )
  return Source(
    name, images, labels, names, coarse if name == "cifar100" else None
  )


def read_source(path) -> Source:
  """Any supported SOURCE into memory; a damaged or foreign one is a
  UserError naming it."""
  path = pathlib.Path(path)
  if not path.exists():
    _fail(path, "it does not exist")
  if path.is_dir():
    return _read_images(path)
  tar = _Tar(path)
  for marker, reader, hundred in (
    ("cifar-10-batches-bin/data_batch_1.bin", _read_binary, False),
    ("cifar-100-binary/train.bin", _read_binary, True),
    ("cifar-10-batches-py/data_batch_1", _read_python, False),
    ("cifar-100-python/train", _read_python, True),
  ):
    name = tar.find(marker)
    if name:
      root = name[: -len(marker.split("/")[1])]
      try:
        return reader(tar, root, hundred)
      except KeyError as err:
        _fail(path, f"{err.args[0]} is missing: a truncated archive?")
  return _read_images(path)


def write_binary(source: Source, manual_dir) -> pathlib.Path:
  """Writes `source` as the official binary archive TFDS' builder reads."""
  hundred = source.name == "cifar100"
  root = "cifar-100-binary/" if hundred else "cifar-10-batches-bin/"
  archive = pathlib.Path(manual_dir) / (
    "cifar-100-binary.tar.gz" if hundred else "cifar-10-binary.tar.gz"
  )

  def records(split, part=slice(None)):
    planes = source.images[split][part].transpose(0, 3, 1, 2)
    labels = [source.labels[split][part, None]]
    if hundred:
      labels.insert(0, source.coarse[split][part, None])
    rows = np.concatenate(labels + [planes.reshape(len(planes), -1)], axis=1)
    return rows.astype(np.uint8).tobytes()

  with tarfile.open(archive, "w:gz", compresslevel=1) as tar:

    def add(name, payload: bytes):
      info = tarfile.TarInfo(root + name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))

    if hundred:
      add("train.bin", records("train"))
      add("test.bin", records("test"))
      add("fine_label_names.txt", "\n".join(source.class_names).encode())
      add("coarse_label_names.txt", "\n".join(CIFAR100_SUPERCLASSES).encode())
    else:
      bounds = np.linspace(0, len(source.labels["train"]), 6).astype(int)
      for i in range(5):
        part = slice(bounds[i], bounds[i + 1])
        add(f"data_batch_{i + 1}.bin", records("train", part))
      add("test_batch.bin", records("test"))
      add("batches.meta.txt", "\n".join(source.class_names).encode())
  return archive
