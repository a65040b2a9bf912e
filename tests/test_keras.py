"""The tutorial's tf_keras network (experiments/keras_tutorial.py) against
the `reference` preset with the same weights, copied by import_keras: the
same function in eval mode, the same loss and BatchNorm updates in training
mode, close losses over 20 Adam steps, and the import_keras command."""

import logging

import h5py
import jax
import numpy as np
import pytest
import tf_keras as keras
from conftest import compilations, load_experiment

import densenet_jax
from densenet_jax import (
  configs,
  data,
  import_keras,
  inference,
  models,
  steps,
  summary,
)

REFERENCE_PARAMETERS = 1_359_842
STEPS, BATCH = 20, 16


@pytest.fixture(scope="module")
def tutorial():
  return load_experiment("keras_tutorial")


def _randomize(model, seed: int = 0) -> None:
  """Random BatchNorm gammas, betas and moving statistics and classifier
  bias (Keras initialises them to constants, which would hide a swap)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, n),
          rng.normal(0.0, 0.2, n),
          rng.normal(0.0, 0.2, n),
          rng.uniform(0.5, 2.0, n),
        ]
      )
    elif isinstance(layer, keras.layers.Dense):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0.0, 0.2, bias.shape)])


@pytest.fixture(scope="module")
def keras_model(tutorial):
  keras.utils.set_random_seed(0)
  model = tutorial.densenet()
  _randomize(model)
  return model


@pytest.fixture(scope="module")
def h5_path(keras_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("keras") / "model.h5"
  keras_model.save_weights(str(path))
  return path


@pytest.fixture(scope="module")
def workdir(h5_path, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("imported") / "from_keras"
  import_keras.main([str(h5_path), "--workdir", str(workdir)])
  return workdir


@pytest.fixture(scope="module")
def imported(workdir):
  return densenet_jax.load(workdir)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), np.uint8)


def keras_logits(model, x, training=False):
  """The tutorial model's outputs before its softmax."""
  dense = model.layers[-1]
  softmax, dense.activation = dense.activation, keras.activations.linear
  try:
    return model(x, training=training).numpy()
  finally:
    dense.activation = softmax


def test_parameter_counts(keras_model, imported):
  keras_count = sum(
    int(np.prod(w.shape)) for w in keras_model.trainable_weights
  )
  assert keras_count == REFERENCE_PARAMETERS
  ours = inference.num_parameters(imported.variables["params"])
  assert ours == REFERENCE_PARAMETERS


def test_imported_workdir_predicts_as_keras(keras_model, imported, images):
  x = images.astype(np.float32) / 255
  np.testing.assert_allclose(
    imported.logits(images), keras_logits(keras_model, x), atol=1e-5
  )
  keras_probs = keras_model.predict(x, verbose=0)
  np.testing.assert_allclose(imported.predict(images), keras_probs, atol=1e-5)
  assert imported.config.model == "reference" and imported.step == 0


def test_flax_layers_compute_the_same_function(keras_model, imported, images):
  """The plain flax layers (impl="flax") on the same imported variables;
  the workdir's own impl, "fast", is the test above."""
  module = imported.module.clone(impl="flax")
  ours = inference._logits(module, imported.variables, images, models.NO_TTA)
  x = images.astype(np.float32) / 255
  np.testing.assert_allclose(ours, keras_logits(keras_model, x), atol=1e-5)


def test_summary_reads_the_imported_workdir(workdir, capsys):
  result = summary.main(["--workdir", str(workdir)])
  assert result["parameters"] == REFERENCE_PARAMETERS
  assert "checkpoint" in capsys.readouterr().out


def _keras_copy(tutorial, h5_path, floatx="float32"):
  keras.backend.set_floatx(floatx)
  try:
    model = tutorial.densenet()
  finally:
    keras.backend.set_floatx("float32")
  model.load_weights(str(h5_path))
  return model


@pytest.fixture(scope="module")
def batches():
  """STEPS fixed, unaugmented batches of BATCH learnable synthetic images."""
  split = data.synthetic_split(STEPS * BATCH, seed=3)
  return (
    split.images.reshape((STEPS, BATCH) + split.images.shape[1:]),
    split.labels.reshape(STEPS, BATCH),
  )


def _bn_statistics(model):
  return [
    (layer.moving_mean.numpy(), layer.moving_variance.numpy())
    for layer in model.layers
    if isinstance(layer, keras.layers.BatchNormalization)
  ]


@pytest.fixture(scope="module")
def trajectories(keras_model, h5_path, imported, batches):
  """Both trained STEPS steps from the same weights: Keras with the
  tutorial's compile (Adam() defaults, sparse categorical cross-entropy)
  and `train_on_batch`, ours with steps.train_step (the training code's
  step: apply(train=True, mutable=["batch_stats"]), optax softmax
  cross-entropy) and the reference recipe's optimizer (Keras' Adam formula
  with Keras' defaults, optim.keras_adam). Returns
  per-step losses and the BatchNorm moving statistics after step 1."""
  images, labels = batches
  model = keras_model  # its weights are loaded again at the end
  model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")
  keras_losses, keras_stats = [], None
  for x, y in zip(images, labels):
    keras_losses.append(float(model.train_on_batch(x / np.float32(255), y)))
    keras_stats = keras_stats or _bn_statistics(model)

  state = steps.state_with_variables(
    configs.load("reference"), imported.module, imported.variables
  )
  state = steps.replicate(state)
  train_step = jax.pmap(steps.train_step, axis_name=steps.AXIS)
  our_losses, our_stats = [], None
  for x, y in zip(images, labels):
    state, metrics = train_step(state, {"image": x[None], "label": y[None]})
    our_losses.append(float(metrics["loss"][0]))
    if our_stats is None:
      our_stats = jax.device_get(state.batch_stats)
  model.load_weights(str(h5_path))
  return {
    "keras": np.array(keras_losses),
    "ours": np.array(our_losses),
    "keras_stats": keras_stats,
    "our_stats": jax.tree.map(lambda a: a[0], our_stats),
  }


def _bn_paths(module):
  plan = import_keras.layer_plan(module)
  return [path for kind, path in plan if kind == "BatchNormalization"]


def _at(tree, path):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def test_training_mode_loss_at_step_0(tutorial, h5_path, trajectories, batches):
  """Our training-mode loss on the first batch equals Keras' computed in
  float64 within 1e-6 (measured: 1.4e-7). Against the tutorial's float32
  Keras the bound is 1e-4: Keras' training-mode BatchNorm sums its batch
  statistics in float32 with rounding errors up to 2e-5 of a normalised
  activation (at mean 0.5; 7e-5 at mean 3), which over 61 BatchNorms move
  its logits up to 2e-4 and its mean loss up to 1.6e-5 from float64 math
  (measured on 4 batches)."""
  images, labels = batches
  model64 = _keras_copy(tutorial, h5_path, "float64")
  x = images[0].astype(np.float64) / 255
  probs = model64(x, training=True).numpy()
  loss64 = keras.losses.sparse_categorical_crossentropy(labels[0], probs)
  ours, keras32 = trajectories["ours"][0], trajectories["keras"][0]
  print(f"step 0 loss: ours - keras float64 {ours - np.mean(loss64):.2e}")
  print(f"step 0 loss: ours - keras float32 {ours - keras32:.2e}")
  assert ours == pytest.approx(float(np.mean(loss64)), abs=1e-6)
  assert ours == pytest.approx(keras32, abs=1e-4)


def test_batch_norm_updates_after_step_1(imported, trajectories):
  """Moving means agree within 1e-5 (measured: 3e-7 at batch 16, 1.2e-6 at
  batch 32; Keras sums its batch statistics in float32). Keras' fused
  BatchNorm adds the Bessel-corrected batch variance, n / (n - 1) times
  flax's biased one (n: batch x height x width), to its moving variance:
  raw, the two differ by up to 0.01 / (n - 1) of the batch variance
  (measured: 4.2e-5 relative at the last BatchNorm, n = 16 x 4 x 4); with
  that factor applied they agree within 2e-6 relative (measured: 6.6e-7)."""
  momentum = 0.99
  # numpy, not jax: op by op, every BatchNorm's shape would compile anew.
  old = jax.device_get(imported.variables["batch_stats"])
  mean_diff, raw, corrected = [], [], []
  for path, (mean, var) in zip(
    _bn_paths(imported.module), trajectories["keras_stats"]
  ):
    ours = _at(trajectories["our_stats"], path)
    mean_diff.append(np.max(np.abs(ours["mean"] - mean)))
    old_var = _at(old, path)["var"]
    batch_var = (ours["var"] - momentum * old_var) / (1 - momentum)
    n = BATCH * _side(path) ** 2
    bessel = momentum * old_var + (1 - momentum) * batch_var * n / (n - 1)
    raw.append(np.max(np.abs(ours["var"] - var) / var))
    corrected.append(np.max(np.abs(bessel - var) / var))
  print(f"moving mean, max difference {max(mean_diff):.2e}")
  print(f"moving variance, max relative difference: raw {max(raw):.2e}, ")
  print(f"with Keras' n / (n - 1): {max(corrected):.2e}")
  assert max(mean_diff) < 1e-5
  assert max(corrected) < 2e-6 < max(raw) < 1e-4


def _side(path):
  """The side of the feature maps a BatchNorm normalises."""
  if path in ("stem_bn", "final_bn"):
    return {"stem_bn": 32, "final_bn": 4}[path]
  return 32 // 2 ** int(path.split("/")[0][-1])  # block{b}, transition{b}


def test_losses_over_20_steps(trajectories):
  """Per-step losses of Keras and ours from identical weights on the same
  batches. Both compute the same loss (step 0, above), but Adam's first
  steps move every weight by about lr * sign(gradient) whatever the
  gradient's size, so a float32 rounding difference in a near-zero gradient
  becomes a full-size step of the other sign; from there the trajectories
  separate chaotically (two runs of this test, alone and within the whole
  suite, gave our step-1 loss as 1.99812 and 1.99723). Measured at batch
  16: 1e-5 at step 0, 3e-3 at step 1, up to 0.03 at steps 2-3, single
  later steps up to 0.31 apart, as far apart as two of our own runs that
  only place Adam's epsilon differently; the mean over steps 4-19 within
  0.007 and 0.048 in two runs (the per-step differences scatter by about
  0.13, so their mean over 16 steps by about 0.05). So: step 0 within
  1e-4, step 1 within 1e-2, steps 2-3 within 0.15, the mean over steps
  4-19 within 0.2, and both runs learn (the mean loss of the last 10
  steps, about 1.1, below 0.6 times the first, 3.1)."""
  keras, ours = trajectories["keras"], trajectories["ours"]
  for step, (k, o) in enumerate(zip(keras, ours)):
    print(f"step {step:2d}: keras {k:.5f} ours {o:.5f} diff {o - k:+.2e}")
  print(f"mean over steps 4-19: diff {ours[4:].mean() - keras[4:].mean():+.3f}")
  assert abs(ours[0] - keras[0]) < 1e-4
  assert abs(ours[1] - keras[1]) < 1e-2
  assert np.all(np.abs(ours[2:4] - keras[2:4]) < 0.15)
  assert abs(ours[4:].mean() - keras[4:].mean()) < 0.2
  assert ours[-10:].mean() < 0.6 * ours[0]
  assert keras[-10:].mean() < 0.6 * keras[0]


def test_other_networks_are_refused(tutorial, tmp_path, cli_error):
  small = tutorial.densenet(blocks=(2, 2), growth_rate=12)
  path = tmp_path / "small.h5"
  small.save_weights(str(path))
  workdir = tmp_path / "run"
  message = cli_error(import_keras.main, [path, "--workdir", workdir])
  convs = [x.name for x in small.layers if isinstance(x, keras.layers.Conv2D)]
  assert f"'{convs[1]}'" in message and "block0/layer0/conv1" in message
  assert "(1, 1, 16, 24)" in message and "(1, 1, 16, 64)" in message
  assert not workdir.exists()


def test_non_keras_files_are_refused(tmp_path, cli_error):
  path = tmp_path / "other.h5"
  with h5py.File(path, "w") as f:
    f["x"] = np.zeros(3)
  workdir = tmp_path / "run"
  message = cli_error(import_keras.main, [path, "--workdir", workdir])
  assert "not a tf.keras weights file" in message
  (tmp_path / "text.h5").write_text("not hdf5")
  message = cli_error(
    import_keras.main, [tmp_path / "text.h5", "--workdir", workdir]
  )
  assert "cannot read" in message
  assert not workdir.exists()


def test_an_existing_workdir_is_refused(h5_path, workdir, cli_error, unchanged):
  with unchanged(workdir):
    message = cli_error(import_keras.main, [h5_path, "--workdir", workdir])
  assert "not empty" in message


def test_import_compiles_no_initialiser(h5_path, tmp_path, caplog):
  """The imported weights replace everything an initialiser would draw, so
  import_keras builds its state without compiling one (7 s here)."""
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    path = import_keras.main([str(h5_path), "--workdir", str(tmp_path / "w")])
  assert path.exists()
  compiled = compilations(caplog)
  assert not [m for m in compiled if "init" in m], compiled
