"""prepare_data: tiny copies of CIFAR in every layout users bring become a
TFDS data dir that data.load reads; damaged sources leave nothing behind."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from densenet_jax import cifar_files, data, prepare_data

CIFAR100_NAMES = sorted(cifar_files.COARSE_OF)
PER_CLASS = {"train": 3, "test": 1}


def tiny(num_classes, seed=0):
  """{split: (images, labels)}: PER_CLASS images of each class, mixed."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in PER_CLASS.items():
    labels = rng.permutation(np.repeat(np.arange(num_classes), n))
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    out[split] = (images, labels.astype(np.uint8))
  return out


def add(tar, name, payload: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def binary_archive(path, arrays, hundred=False):
  source = cifar_files.Source(
    "cifar100" if hundred else "cifar10",
    {s: a[0] for s, a in arrays.items()},
    {s: a[1] for s, a in arrays.items()},
    CIFAR100_NAMES if hundred else list(data.CIFAR10_CLASSES),
    {s: a[1] // 5 for s, a in arrays.items()} if hundred else None,
  )
  built = cifar_files.write_binary(source, path.parent)
  return built.rename(path)


def python_archive(path, arrays, hundred=False):
  root = "cifar-100-python/" if hundred else "cifar-10-batches-py/"

  def batch(split):
    images, labels = arrays[split]
    pixels = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    key = b"fine_labels" if hundred else b"labels"
    out = {b"data": pixels, key: labels.tolist()}
    if hundred:
      out[b"coarse_labels"] = (labels // 5).tolist()
    return pickle.dumps(out)

  with tarfile.open(path, "w:gz") as tar:
    if hundred:
      add(tar, root + "train", batch("train"))
      add(tar, root + "test", batch("test"))
      names = [n.encode() for n in CIFAR100_NAMES]
      add(tar, root + "meta", pickle.dumps({b"fine_label_names": names}))
    else:
      for i in range(1, 6):  # the whole split in the first batch
        part = batch("train") if i == 1 else _empty_batch()
        add(tar, root + f"data_batch_{i}", part)
      add(tar, root + "test_batch", batch("test"))
      names = [n.encode() for n in data.CIFAR10_CLASSES]
      add(tar, root + "batches.meta", pickle.dumps({b"label_names": names}))
  return path


def _empty_batch():
  return pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []})


def image_folder(root, arrays, names, suffix=".png"):
  for split, (images, labels) in arrays.items():
    for i, (image, label) in enumerate(zip(images, labels)):
      path = root / split / names[label] / f"{i:04d}{suffix}"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
  return root


def image_tarball(path, folder):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname="cifar10")
  return path


def sorted_pairs(source, split):
  """(label, image bytes) pairs in a fixed order, whatever the file order."""
  return sorted(
    (int(label), image.tobytes())
    for image, label in zip(source.images[split], source.labels[split])
  )


def expected_pairs(arrays, split):
  images, labels = arrays[split]
  return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """One tiny CIFAR-10, from an image-folder tarball, prepared once."""
  root = tmp_path_factory.mktemp("prepared")
  arrays = tiny(10)
  folder = image_folder(root / "folder", arrays, data.CIFAR10_CLASSES)
  tarball = image_tarball(root / "cifar10-png.tar.gz", folder)
  result = prepare_data.main([str(tarball), "--data-dir", str(root / "dd")])
  return root / "dd", arrays, result


def test_an_image_tarball_becomes_a_data_dir_that_training_reads(
  prepared, capsys
):
  data_dir, arrays, result = prepared
  assert result["name"] == "cifar10"
  assert result["counts"]["train"].tolist() == [3] * 10
  assert result["counts"]["test"].tolist() == [1] * 10
  ds = data.load("cifar10", str(data_dir), val_size=5, progress=False)
  assert ds.class_names == list(data.CIFAR10_CLASSES)
  assert len(ds.splits["train"]) == 25 and len(ds.splits["test"]) == 10
  both = data.Split(
    np.concatenate([ds.splits["train"].images, ds.splits["validation"].images]),
    np.concatenate([ds.splits["train"].labels, ds.splits["validation"].labels]),
  )
  source = cifar_files.Source("cifar10", {"train": both.images}, {}, [])
  source.labels["train"] = both.labels
  assert sorted_pairs(source, "train") == expected_pairs(arrays, "train")
  # Classes are mixed: the validation split (the last 5) is not one class.
  assert len(set(ds.splits["validation"].labels.tolist())) > 1
  assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10"]


def test_preparing_again_is_refused(prepared, tmp_path, cli_error):
  data_dir, arrays, _ = prepared
  archive = binary_archive(tmp_path / "cifar-10-binary.tar.gz", arrays)
  message = cli_error(prepare_data.main, [archive, "--data-dir", data_dir])
  assert "cifar10/3.0.2 already exists" in message


@pytest.mark.parametrize("kind", ["binary", "python", "folder", "tarball"])
def test_every_cifar10_layout_reads_the_same(tmp_path, kind):
  arrays = tiny(10, seed=1)
  if kind == "binary":
    path = binary_archive(tmp_path / "cifar-10-binary.tar.gz", arrays)
  elif kind == "python":
    path = python_archive(tmp_path / "cifar-10-python.tar.gz", arrays)
  else:
    path = image_folder(tmp_path / "f", arrays, data.CIFAR10_CLASSES, ".jpg")
    if kind == "tarball":
      path = image_tarball(tmp_path / "f.tar.gz", path)
  source = cifar_files.read_source(path)
  assert source.name == "cifar10"
  assert source.class_names == list(data.CIFAR10_CLASSES)
  for split in ("train", "test"):
    if kind in ("folder", "tarball"):  # JPEG: lossy; compare the labels
      assert sorted(source.labels[split]) == sorted(arrays[split][1])
      assert source.images[split].shape == arrays[split][0].shape
    else:  # the official files: the same images in the same order
      np.testing.assert_array_equal(source.images[split], arrays[split][0])
      np.testing.assert_array_equal(source.labels[split], arrays[split][1])


@pytest.mark.parametrize("kind", ["binary", "python", "folder"])
def test_every_cifar100_layout_reads_the_same(tmp_path, kind):
  arrays = tiny(100, seed=2)
  if kind == "binary":
    path = binary_archive(tmp_path / "c.tar.gz", arrays, hundred=True)
  elif kind == "python":
    path = python_archive(tmp_path / "c.tar.gz", arrays, hundred=True)
  else:
    path = image_folder(tmp_path / "f", arrays, CIFAR100_NAMES)
  source = cifar_files.read_source(path)
  assert source.name == "cifar100" and source.class_names == CIFAR100_NAMES
  for split in ("train", "test"):
    assert sorted_pairs(source, split) == expected_pairs(arrays, split)
  # apple (0) is in fruit_and_vegetables (4), beaver (4) in aquatic_mammals
  coarse = dict(zip(source.labels["train"], source.coarse["train"]))
  if kind == "folder":
    assert coarse[0] == 4 and coarse[4] == 0


def test_a_cifar100_python_archive_is_prepared(tmp_path):
  arrays = tiny(100, seed=3)
  archive = python_archive(
    tmp_path / "cifar-100-python.tar.gz", arrays, hundred=True
  )
  result = prepare_data.prepare(archive, tmp_path / "dd")
  assert result["counts"]["test"].tolist() == [1] * 100
  ds = data.load("cifar100", str(tmp_path / "dd"), val_size=50, progress=False)
  assert ds.num_classes == 100 and ds.class_names[:2] == CIFAR100_NAMES[:2]
  assert len(ds.splits["train"]) == 250


def _truncated(tmp_path):
  archive = binary_archive(tmp_path / "cifar-10-binary.tar.gz", tiny(10))
  payload = archive.read_bytes()
  archive.write_bytes(payload[: len(payload) // 2])
  return archive


def _foreign(tmp_path):
  path = tmp_path / "notes.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    add(tar, "notes/readme.txt", b"not CIFAR")
  return path


def _not_a_tarball(tmp_path):
  path = tmp_path / "cifar-10-binary.tar.gz"
  path.write_bytes(b"<html>404</html>")
  return path


def _wrong_size(tmp_path):
  folder = image_folder(tmp_path / "f", tiny(10), data.CIFAR10_CLASSES)
  Image.new("RGB", (64, 48)).save(folder / "test" / "cat" / "big.png")
  return folder


def _other_classes(tmp_path):
  arrays = tiny(10)
  return image_folder(tmp_path / "f", arrays, [f"c{i}" for i in range(10)])


@pytest.mark.parametrize(
  "make, expected",
  [
    (_truncated, "truncated"),
    (_foreign, "neither an official CIFAR archive nor image folders"),
    (_not_a_tarball, "not a readable tar archive"),
    (_wrong_size, "big.png is 64x48, not 32x32"),
    (_other_classes, "neither CIFAR-10's 10 nor CIFAR-100's 100 classes"),
    (lambda tmp_path: tmp_path / "missing.tar.gz", "it does not exist"),
  ],
)
def test_bad_sources_fail_in_one_line_and_leave_nothing(
  tmp_path, make, expected, cli_error
):
  source = make(tmp_path)
  data_dir = tmp_path / "dd"
  message = cli_error(prepare_data.main, [source, "--data-dir", data_dir])
  assert message.startswith(f"error: cannot prepare data from {source}: ")
  assert expected in message
  assert not data_dir.exists()


def test_a_failed_check_leaves_no_half_written_data_dir(
  tmp_path, monkeypatch, cli_error
):
  archive = binary_archive(tmp_path / "cifar-10-binary.tar.gz", tiny(10))
  data_dir = tmp_path / "dd"
  data_dir.mkdir()
  (data_dir / "mnist").mkdir()  # someone else's data set stays

  def wrong(source, where):
    raise prepare_data.errors.UserError("prepared cifar10 test has 9 images")

  monkeypatch.setattr(prepare_data, "check", wrong)
  message = cli_error(prepare_data.main, [archive, "--data-dir", data_dir])
  assert message == "error: prepared cifar10 test has 9 images"
  assert sorted(p.name for p in data_dir.iterdir()) == ["mnist"]
