"""The decoded cache: written once, then read instead of the TFDS source."""

import os
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from densenet_jax import data, data_cache

SIZES = {"train": 60, "test": 20}
NAMES = [f"class{i}" for i in range(10)]


class FakeSource:
  """A TFDS-like source over files on disk: records in a shuffled order,
  each with its original position in its `id`; counts its reads and fails
  them when `readable` is False."""

  readable = True
  reads = 0

  def __init__(self, data_dir, split, full_name=None, n=None):
    version = "3.0.2"
    n = SIZES[split] if n is None else n
    folder = data_dir / "cifar10" / version
    path = folder / f"cifar10-{split}.array_record-00000-of-00001"
    if not path.exists():
      folder.mkdir(parents=True, exist_ok=True)
      path.write_bytes(b"x" * 100)
    self.split = split
    self.positions = np.random.default_rng(len(split)).permutation(n)
    instruction = types.SimpleNamespace(filename=str(path), skip=0, take=n)
    self.dataset_info = types.SimpleNamespace(
      full_name=full_name or f"cifar10/{version}",
      splits={split: types.SimpleNamespace(file_instructions=[instruction])},
      features={"label": types.SimpleNamespace(names=NAMES)},
    )

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, i):
    if not FakeSource.readable:
      raise AssertionError("the source was read")
    FakeSource.reads += 1
    position = int(self.positions[i])
    image = np.full((32, 32, 3), position * 3 % 256, np.uint8)
    image[0, 0, 1] = len(self.split)
    return {
      "id": f"{self.split}_{position:05d}".encode(),
      "image": image,
      "label": position % 10,
    }

  def __getitems__(self, index):
    return [self[i] for i in index]


@pytest.fixture
def fake_tfds(tmp_path, monkeypatch):
  """tfds.data_source over FakeSource in tmp_path/data; returns a dict whose
  "full_name" and "n" (train size) a test may change between loads."""
  monkeypatch.delenv(data_cache.ENV, raising=False)
  monkeypatch.setattr(FakeSource, "readable", True)
  monkeypatch.setattr(FakeSource, "reads", 0)
  monkeypatch.setattr(data, "ensure_prepared", lambda name, data_dir: None)
  settings = {"full_name": None, "n": None}

  def data_source(name, split, data_dir=None):
    n = settings["n"] if split == "train" else None
    return FakeSource(tmp_path / "data", split, settings["full_name"], n)

  monkeypatch.setattr(tfds, "data_source", data_source)
  return settings


def load(**kwargs):
  return data.load("cifar10", val_size=10, progress=False, **kwargs)


def assert_same(a, b, names=NAMES):
  assert a.class_names == b.class_names == list(names)
  for split in data.SPLITS:
    np.testing.assert_array_equal(
      a.splits[split].images, b.splits[split].images
    )
    np.testing.assert_array_equal(
      a.splits[split].labels, b.splits[split].labels
    )
    assert a.splits[split].images.dtype == b.splits[split].images.dtype
    assert a.splits[split].labels.dtype == b.splits[split].labels.dtype


def cache_folder(tmp_path, version="3.0.2"):
  return tmp_path / "data" / "cifar10" / version / data_cache.FOLDER


def test_first_load_writes_the_cache_second_does_not_read_the_source(
  fake_tfds, tmp_path
):
  uncached = load(cache=False)
  assert not cache_folder(tmp_path).exists()
  first = load()
  assert sorted(p.name for p in cache_folder(tmp_path).iterdir()) == [
    "key.json",
    "test_images.npy",
    "test_labels.npy",
    "train_images.npy",
    "train_labels.npy",
  ]
  assert_same(first, uncached)
  # Readable by the data dir's other users, as the data set itself.
  assert cache_folder(tmp_path).stat().st_mode & 0o777 == 0o755
  FakeSource.readable = False
  second = load()
  assert_same(second, uncached)
  # Nothing but the cache is left beside the data (no temporary folders).
  assert sorted(os.listdir(cache_folder(tmp_path).parent)) == [
    "cifar10-test.array_record-00000-of-00001",
    "cifar10-train.array_record-00000-of-00001",
    data_cache.FOLDER,
  ]


def test_a_changed_file_size_or_mtime_invalidates_the_cache(
  fake_tfds, tmp_path
):
  expected = load()
  train_file = next(cache_folder(tmp_path).parent.glob("*train*"))
  train_file.write_bytes(b"y" * 101)  # the data set was prepared again
  FakeSource.reads = 0
  assert_same(load(), expected)
  assert FakeSource.reads >= sum(SIZES.values())  # decoded again
  FakeSource.readable = False
  assert_same(load(), expected)  # ... and the new cache is used
  FakeSource.readable = True
  stat = train_file.stat()
  os.utime(train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  FakeSource.reads = 0
  load()
  assert FakeSource.reads >= sum(SIZES.values())


def test_another_size_or_version_invalidates_the_cache(fake_tfds):
  load()
  fake_tfds["n"] = 50  # same files, another number of examples
  FakeSource.reads = 0
  dataset = load()
  assert len(dataset.splits["train"]) + len(dataset.splits["validation"]) == 50
  assert FakeSource.reads >= 50 + SIZES["test"]
  # Another version of the data set in the same files.
  fake_tfds["full_name"] = "cifar10/3.0.3"
  FakeSource.reads = 0
  load()
  assert FakeSource.reads >= 50 + SIZES["test"]


def test_cache_off_by_argument_or_environment(fake_tfds, tmp_path, monkeypatch):
  load(cache=False)
  monkeypatch.setenv(data_cache.ENV, "0")
  load()
  assert not cache_folder(tmp_path).exists()
  load(cache=True)  # the argument wins over the environment
  assert cache_folder(tmp_path).exists()
  FakeSource.reads = 0
  load()  # off: the source is read although a cache exists
  assert FakeSource.reads >= sum(SIZES.values())


def test_environment_folder_holds_the_cache(fake_tfds, tmp_path, monkeypatch):
  monkeypatch.setenv(data_cache.ENV, str(tmp_path / "elsewhere"))
  expected = load()
  assert (tmp_path / "elsewhere" / "cifar10" / "3.0.2" / "key.json").exists()
  assert not cache_folder(tmp_path).exists()
  FakeSource.readable = False
  assert_same(load(), expected)


def test_an_unwritable_cache_folder_still_loads(
  fake_tfds, tmp_path, monkeypatch
):
  (tmp_path / "a_file").write_text("")
  monkeypatch.setenv(data_cache.ENV, str(tmp_path / "a_file" / "cache"))
  expected = load(cache=False)
  assert_same(load(), expected)
  assert_same(load(), expected)
  assert sorted(os.listdir(tmp_path)) == ["a_file", "data"]


def test_an_interrupted_write_leaves_no_half_cache(
  fake_tfds, tmp_path, monkeypatch
):
  expected = load(cache=False)
  saves = []

  def save_then_fail(path, array):
    saves.append(path)
    if len(saves) == 3:
      raise OSError("No space left on device")
    with open(path, "wb") as file:
      np.lib.format.write_array(file, array)

  monkeypatch.setattr(data_cache.np, "save", save_then_fail)
  assert_same(load(), expected)
  assert not cache_folder(tmp_path).exists()
  assert sorted(os.listdir(cache_folder(tmp_path).parent)) == [
    "cifar10-test.array_record-00000-of-00001",
    "cifar10-train.array_record-00000-of-00001",
  ]


def test_a_damaged_cache_is_decoded_again(fake_tfds, tmp_path):
  expected = load()
  images = cache_folder(tmp_path) / "train_images.npy"
  images.write_bytes(images.read_bytes()[:1000])
  FakeSource.reads = 0
  assert_same(load(), expected)
  assert FakeSource.reads >= sum(SIZES.values())


def test_mocked_tfds_is_never_cached(tmp_path, monkeypatch):
  monkeypatch.delenv(data_cache.ENV, raising=False)
  with tfds.testing.mock_data(num_examples=30):
    sources = {
      s: tfds.data_source("cifar10", split=s, data_dir=str(tmp_path))
      for s in ("train", "test")
    }
    assert data_cache.source_key(sources) is None
    data.load("cifar10", str(tmp_path), val_size=10, progress=False)
  assert os.listdir(tmp_path) == []


def test_a_prepared_tfds_data_dir_is_cached_and_read_back(
  tmp_path, monkeypatch
):
  """The real thing on a tiny scale: an array_record data dir built by
  prepare_data (TensorFlow needed) and read through tfds.data_source."""
  from densenet_jax import cifar_files, prepare_data

  monkeypatch.delenv(data_cache.ENV, raising=False)
  rng = np.random.default_rng(0)
  labels = {"train": np.arange(30) % 10, "test": np.arange(10)}
  images = {
    s: rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    for s, y in labels.items()
  }
  names = list(data.CIFAR10_CLASSES)
  source = cifar_files.Source("cifar10", images, labels, names, None)
  archive = cifar_files.write_binary(source, tmp_path)
  data_dir = tmp_path / "dd"
  prepare_data.prepare(archive, data_dir)

  def load_real(**kwargs):
    return data.load("cifar10", str(data_dir), 5, progress=False, **kwargs)

  expected = load_real(cache=False)
  assert_same(load_real(), expected, names)
  (version,) = (data_dir / "cifar10").iterdir()
  assert (version / data_cache.FOLDER / "key.json").exists()

  def no_decoding(*args):
    raise AssertionError("decoded again")

  monkeypatch.setattr(data, "_read_source", no_decoding)
  assert_same(load_real(), expected, names)
