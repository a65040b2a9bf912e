import numpy as np
import pytest
import tensorflow_datasets as tfds

from densenet_jax import data, errors


def make_split(n):
  return data.Split(
    np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3) % 251,
    np.arange(n, dtype=np.int32),
  )


def test_load_splits_train_validation_test_from_tfds():
  with tfds.testing.mock_data(num_examples=120):
    ds = data.load("cifar10", val_size=20, progress=False)
    full_train = tfds.data_source("cifar10", split="train")
    last = np.stack([full_train[i]["image"] for i in range(100, 120)])
  assert [len(ds.splits[s]) for s in data.SPLITS] == [100, 20, 120]
  assert ds.splits["train"].images.dtype == np.uint8
  assert ds.splits["train"].images.shape[1:] == (32, 32, 3)
  assert ds.num_classes == 10
  # Validation is the *last* val_size training images.
  np.testing.assert_array_equal(ds.splits["validation"].images, last)


def test_load_train_size_and_bad_sizes():
  with tfds.testing.mock_data(num_examples=120):
    ds = data.load("cifar10", val_size=20, train_size=50, progress=False)
    assert len(ds.splits["train"]) == 50
    with pytest.raises(errors.UserError, match="val_size=200"):
      data.load("cifar10", val_size=200, progress=False)
    with pytest.raises(errors.UserError, match="train_size=101"):
      data.load("cifar10", val_size=20, train_size=101, progress=False)


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(errors.UserError, match="unknown dataset 'mnist'"):
    data.load("mnist")


def test_tutorial_steps_per_epoch():
  assert data.steps_per_epoch(45_000, 128) == 351


def test_train_batches_shuffle_per_epoch_and_reproduce():
  split = make_split(100)
  epoch0 = [b["label"] for b in data.train_batches(split, 32, seed=1, epoch=0)]
  again = [b["label"] for b in data.train_batches(split, 32, seed=1, epoch=0)]
  epoch1 = [b["label"] for b in data.train_batches(split, 32, seed=1, epoch=1)]
  assert len(epoch0) == 3  # the remainder of 4 is dropped
  np.testing.assert_array_equal(np.concatenate(epoch0), np.concatenate(again))
  assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))
  assert len(set(np.concatenate(epoch0).tolist())) == 96  # no repeats
  resumed = [
    b["label"] for b in data.train_batches(split, 32, 1, 0, start_step=2)
  ]
  np.testing.assert_array_equal(resumed[0], epoch0[2])


def test_train_batches_flip_each_example_in_every_other_epoch():
  split = make_split(100)  # labels 0..99 name the examples

  def flips(epoch, seed=1):
    by_example = {}
    for b in data.train_batches(split, 20, seed=seed, epoch=epoch):
      by_example.update(zip(b["label"].tolist(), b["flip"].tolist()))
    return np.array([by_example[i] for i in range(100)])

  first, second, third = flips(0), flips(1), flips(2)
  assert 30 < first.sum() < 70  # random in the first epoch
  np.testing.assert_array_equal(second, 1 - first)
  np.testing.assert_array_equal(third, first)
  assert not np.array_equal(first, flips(0, seed=2))


def test_eval_batches_count_every_example_once():
  split = make_split(10)
  batches = list(data.eval_batches(split, 4))
  assert [len(b["label"]) for b in batches] == [4, 4, 4]
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert mask.sum() == 10
  np.testing.assert_array_equal(labels[mask == 1], split.labels)


def test_shard_splits_over_devices_or_refuses():
  batch = {"x": np.zeros((8, 3)), "y": np.zeros(8)}
  assert data.shard(batch, 4)["x"].shape == (4, 2, 3)
  with pytest.raises(
    errors.UserError, match="batch size 8 does not divide over 3 devices"
  ):
    data.shard(batch, 3)


def test_an_npz_data_dir_is_read_without_tfds(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "cifar10.npz"
  np.savez(
    path,
    x_train=rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8),
    y_train=np.arange(50) % 10,
    x_test=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8),
    y_test=np.arange(20) % 10,
  )
  dataset = data.load("cifar10", str(path), val_size=10, progress=False)
  sizes = {name: len(split) for name, split in dataset.splits.items()}
  assert sizes == {"train": 40, "validation": 10, "test": 20}
  assert dataset.class_names[0] == "airplane" and dataset.num_classes == 10
  assert dataset.splits["train"].labels.dtype == np.int32
  with pytest.raises(errors.UserError, match="cannot read cifar10"):
    data.load("cifar10", str(tmp_path / "missing.npz"), val_size=10)


class _ShuffledSource:
  """A TFDS-like source holding records in a shuffled order, each with an
  `id` naming its position in the original file, as TFDS stores CIFAR."""

  def __init__(self, split, n):
    self.positions = np.random.default_rng(1).permutation(n)
    self.split = split

  def __len__(self):
    return len(self.positions)

  def __getitem__(self, i):
    position = int(self.positions[i])
    image = np.full((32, 32, 3), position % 256, np.uint8)
    image[0, 0, 0] = position // 256
    return {
      "id": f"{self.split}_{position:05d}".encode(),
      "image": image,
      "label": position % 10,
    }

  def __getitems__(self, index):
    return [self[i] for i in index]


def test_splits_follow_the_original_file_order_of_the_ids(monkeypatch):
  def data_source(name, split, data_dir=None):
    source = _ShuffledSource(split, 600 if split == "train" else 100)
    names = [f"class{i}" for i in range(10)]
    source.dataset_info = type(
      "Info", (), {"features": {"label": type("L", (), {"names": names})}}
    )
    return source

  monkeypatch.setattr(tfds, "data_source", data_source)
  dataset = data.load("cifar10", val_size=50, progress=False)

  def positions(split):
    images = dataset.splits[split].images
    return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]

  # As Keras' load_data(): train is the first 550 of the files, validation
  # the last 50, both in file order; the test set in its file order too.
  np.testing.assert_array_equal(positions("train"), np.arange(550))
  np.testing.assert_array_equal(positions("validation"), np.arange(550, 600))
  np.testing.assert_array_equal(positions("test"), np.arange(100))
  np.testing.assert_array_equal(
    dataset.splits["validation"].labels, np.arange(550, 600) % 10
  )


def test_ids_without_numbers_keep_the_stored_order():
  assert data.original_order([b"train_2", b"train_0", "test_1"]).tolist() == [
    1,
    2,
    0,
  ]
  assert data.original_order(["gebc ahgjef", "train_3"]) is None


def test_no_network_and_no_data_fails_at_once_with_the_offline_way(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(data, "_reachable", lambda url: False)
  missing = tmp_path / "nowhere"
  with pytest.raises(errors.UserError) as err:
    data.load("cifar10", str(missing), progress=False)
  message = str(err.value)
  assert f"cifar10 is not in data dir {missing}" in message
  assert "could not be downloaded" in message
  assert "cifar-10-binary.tar.gz" in message
  assert f"densenet_jax.prepare_data SOURCE --data-dir {missing}" in message
  assert not missing.exists()


def test_a_failing_download_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "_reachable", lambda url: True)

  def refuse(self, *args, **kwargs):
    raise ConnectionError("Name or service not known")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
  with pytest.raises(errors.UserError) as err:
    data.load("cifar100", str(tmp_path), progress=False)
  message = str(err.value)
  assert "cifar100 is not in data dir" in message
  assert "(Name or service not known)" in message
  assert "cifar-100-binary.tar.gz" in message


def test_train_without_network_ends_in_one_line(
  tmp_path, monkeypatch, cli_error
):
  from densenet_jax import train

  monkeypatch.setattr(data, "_reachable", lambda url: False)
  workdir = tmp_path / "run"
  message = cli_error(
    train.main,
    ["--workdir", workdir, "--config", "smoke", "--data-dir", tmp_path / "no"],
  )
  assert "could not be downloaded" in message
  assert not workdir.exists()  # the refused run left nothing behind
