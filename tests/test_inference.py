"""The Python API: densenet_jax.load(workdir).predict(images)."""

import json

import numpy as np
import pytest
from conftest import set_run_config

import densenet_jax
from densenet_jax import data, errors


@pytest.fixture(scope="module")
def model(trained_workdir):
  return densenet_jax.load(trained_workdir)


def test_predict_probabilities_for_a_uint8_batch(model, trained_workdir):
  test = data.load("synthetic", val_size=64).splits["test"]
  probs = model.predict(test.images[:7])
  assert probs.shape == (7, 10)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
  # Batching and padding do not change the answer.
  np.testing.assert_allclose(
    model.predict(test.images[:7], batch_size=2), probs, atol=1e-6
  )
  np.testing.assert_allclose(model.predict(test.images[3])[0], probs[3], 1e-5)
  assert model.num_classes == 10 and model.class_names[0] == "class0"
  assert model.config.model == "tiny"
  assert model.checkpoint.parent == trained_workdir / "checkpoints" / "best"
  assert set(model.variables) == {"params", "batch_stats"}
  assert model.predict(test.images[:0]).shape == (0, 10)


def test_any_checkpoint_folder_of_the_workdir_loads(trained_workdir, model):
  ckpts = trained_workdir / "checkpoints"
  for path in (ckpts, ckpts / "best", model.checkpoint):
    assert densenet_jax.load(path).checkpoint == model.checkpoint
  latest = densenet_jax.load(trained_workdir, kind="latest")
  assert latest.checkpoint.parent.name == "latest"


def test_wrong_inputs_are_user_errors(model):
  with pytest.raises(errors.UserError, match="images are float32; expected"):
    model.predict(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(errors.UserError, match=r"shape \(2, 28, 28\)"):
    model.predict(np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(errors.UserError, match="batch size 0 must be positive"):
    model.predict(np.zeros((2, 32, 32, 3), np.uint8), batch_size=0)


def test_load_changes_nothing_and_needs_a_workdir(
  trained_workdir, tmp_path, unchanged
):
  with unchanged(trained_workdir):
    densenet_jax.load(trained_workdir)
  (tmp_path / "notes.txt").write_text("hi")
  with pytest.raises(errors.UserError, match="has no config.json"):
    densenet_jax.load(tmp_path)
  with pytest.raises(errors.UserError, match="unknown checkpoint 'worst'"):
    densenet_jax.load(trained_workdir, kind="worst")


def test_class_names():
  assert data.class_names("cifar10")[:3] == [
    "airplane",
    "automobile",
    "bird",
  ]
  names = data.class_names("cifar100")
  assert len(names) == 100 and names == sorted(names)
  with pytest.raises(errors.UserError, match="unknown dataset 'svhn'"):
    data.class_names("svhn")


def test_load_defaults_to_the_checkpoint_training_tested(workdir_copy):
  saved = json.loads((workdir_copy / "config.json").read_text())
  assert saved["test_checkpoint"] == "best"
  set_run_config(workdir_copy, test_checkpoint="latest")  # as cpu90's runs
  assert densenet_jax.load(workdir_copy).checkpoint.parent.name == "latest"
  best = densenet_jax.load(workdir_copy, kind="best")
  assert best.checkpoint.parent.name == "best"
  del saved["test_checkpoint"]  # a run from before the field: the best
  (workdir_copy / "config.json").write_text(json.dumps(saved))
  assert densenet_jax.load(workdir_copy).checkpoint == best.checkpoint
