"""Recipe features in the loop: label smoothing, EMA weights, test-time flip
averaging, schedules, per-epoch test scores; configs load and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import interrupt_at_batch

import densenet_jax
from densenet_jax import (
  checkpointing,
  configs,
  data,
  evaluate,
  models,
  optim,
  steps,
  train,
)


def test_label_smoothing_mixes_in_the_uniform_distribution():
  logits = jax.random.normal(jax.random.key(0), (5, 10))
  labels = jnp.arange(5)
  log_p = jax.nn.log_softmax(logits)
  expected = -(0.9 + 0.01) * log_p[jnp.arange(5), labels] - 0.01 * (
    log_p.sum(-1) - log_p[jnp.arange(5), labels]
  )
  got = steps.cross_entropy(logits, labels, label_smoothing=0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(
    steps.cross_entropy(logits, labels),
    optax.softmax_cross_entropy_with_integer_labels(logits, labels),
  )


def test_ema_decay_warms_up_then_holds():
  ema = {"params": {"w": jnp.zeros(2)}, "batch_stats": {}}
  new = {"w": jnp.ones(2)}
  first = steps.update_ema(ema, new, {}, 0, 0.999)["params"]
  np.testing.assert_allclose(first["w"], 0.9)  # decay 1/10 at step 0
  late = steps.update_ema(ema, new, {}, 10**6, 0.999)["params"]
  np.testing.assert_allclose(late["w"], 0.001, rtol=1e-4)


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
  """uint8 images whose neighbouring pixels and channels correlate, as
  photographs' do: random 8x8 colour fields upsampled 4x and blurred."""
  rng = np.random.default_rng(seed)
  base = (
    rng.uniform(0, 255, (n, 8, 8, 1)) * 0.7
    + rng.uniform(0, 255, (n, 8, 8, 3)) * 0.3
  )
  up = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
  up = (up + np.roll(up, 1, axis=1) + np.roll(up, 1, axis=2)) / 3
  noise = rng.normal(0, 4, up.shape)
  return np.clip(up + noise, 0, 255).astype(np.uint8)


def test_the_whitened_stem_decorrelates_its_outputs():
  images = smooth_images(300)
  kernel = models.whitening_kernel(images, (3, 3, 3, 32))
  # The stem's convolution (without padding: whole patches only).
  out = jax.lax.conv_general_dilated(
    models.scale_inputs(images),
    jnp.asarray(kernel),
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision="highest",
  )
  out = np.asarray(out, np.float64).reshape(-1, 32)
  moments = out[:, :16].T @ out[:, :16] / len(out)
  # Uncorrelated, of unit second moment along the leading eigenvector and
  # lambda / (lambda + eps) along the others, in the eigenvalues' order.
  np.testing.assert_allclose(moments - np.diag(np.diag(moments)), 0, atol=2e-3)
  diagonal = np.diag(moments)
  assert 0.999 < diagonal[0] < 1.0001 and diagonal[-1] > 0.5
  assert np.all(np.diff(diagonal) < 1e-6)
  np.testing.assert_array_equal(kernel[..., 16:], -kernel[..., :16])


def test_a_fresh_state_starts_from_the_whitened_stem(smoke_config, dataset):
  smoke_config.whiten_stem = True
  smoke_config.ema_decay = 0.9
  images = smooth_images(64)
  model = models.from_config(
    smoke_config, dataset.num_classes, axis_name=steps.AXIS
  )
  state = steps.create_train_state(smoke_config, model, (32, 32, 3), 1, images)
  kernel = models.whitening_kernel(images, (3, 3, 3, 4))
  for variables in (state.params, state.ema["params"]):
    np.testing.assert_array_equal(variables["stem_conv"]["kernel"], kernel)
  with pytest.raises(ValueError, match="whiten_stem needs the training"):
    steps.create_train_state(smoke_config, model, (32, 32, 3))


def tiny_state(config, dataset):
  model = models.from_config(config, dataset.num_classes, axis_name=steps.AXIS)
  return steps.create_train_state(config, model, (32, 32, 3))


def test_eval_uses_the_ema_weights_and_averages_flipped_logits(
  smoke_config, dataset
):
  smoke_config.ema_decay = 0.9
  state = tiny_state(smoke_config, dataset)
  # An EMA that differs from the live weights, to tell which one is used.
  ema = jax.tree.map(lambda x: x * 0.5 + 0.1, state.ema)
  state = state.replace(ema=ema)
  split = dataset.splits["test"]
  _, p_eval = steps.make_steps(None, tta=models.TTA(flip=True))
  result = evaluate.evaluate_state(p_eval, steps.replicate(state), split, 100)
  images = split.images / 255.0
  logits = (
    state.apply_fn(ema, images) + state.apply_fn(ema, images[:, :, ::-1])
  ) / 2
  expected = steps.cross_entropy(logits, split.labels).mean()
  np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(
    result["accuracy"], (np.argmax(logits, -1) == split.labels).mean()
  )


def test_eval_in_chunks_gives_the_logits_of_the_whole_batch(
  smoke_config, dataset
):
  """eval_logits chunk by chunk (lax.map, the default on a CPU), the last
  chunk padded, with every test-time view: the whole batch's logits."""
  state = tiny_state(smoke_config, dataset)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  images = dataset.splits["test"].images[:21]
  tta = models.TTA(flip=True, translate_px=1)

  def logits(x, chunk=None):
    return models.eval_logits(state.apply_fn, variables, x, tta, chunk)

  run = jax.jit(logits, static_argnums=1)
  whole, chunked = run(images, 0), run(images, 8)
  assert chunked.shape == whole.shape == (21, dataset.num_classes)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  # The tests run on a CPU: the default evaluates in chunks.
  assert models.eval_chunk() == models.EVAL_CHUNK_CPU
  assert "scan" in str(jax.make_jaxpr(logits)(images))
  assert "scan" not in str(jax.make_jaxpr(logits, static_argnums=1)(images, 0))


def test_translate_tta_averages_moved_images_and_their_mirrors():
  """Half the image's (mirror-averaged) logits, a quarter each of the image
  moved one pixel down-right and up-left, uncovered pixels 0."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  weights = rng.normal(size=(8 * 8 * 3, 10)).astype(np.float32)

  def apply_fn(variables, x, train):
    assert not train
    return x.reshape(len(x), -1) @ weights

  def moved(x, d):
    out = np.zeros_like(x)
    if d > 0:
      out[:, d:, d:] = x[:, :-d, :-d]
    else:
      out[:, :d, :d] = x[:, -d:, -d:]
    return out

  def mirrored(x):
    return (apply_fn(None, x, False) + apply_fn(None, x[:, :, ::-1], False)) / 2

  x = images / 255.0
  expected = 0.5 * mirrored(x) + 0.25 * (
    mirrored(moved(x, 1)) + mirrored(moved(x, -1))
  )
  tta = models.TTA(flip=True, translate_px=1)
  got = models.eval_logits(apply_fn, None, images, tta)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  no_translation = models.eval_logits(
    apply_fn, None, images, tta._replace(translate_px=0)
  )
  np.testing.assert_allclose(no_translation, mirrored(x), rtol=1e-5, atol=1e-5)


def smoke_sized(config):
  """A recipe shrunk to the smoke config's model and data sizes."""
  smoke = configs.load("smoke")
  for key in (
    "model",
    "val_size",
    "train_size",
    "batch_size",
    "eval_batch_size",
    "num_epochs",
    "log_every_steps",
  ):
    config[key] = smoke[key]
  return config


@pytest.mark.parametrize(
  "name", ["reference", "paper", "fast", "cpu_check", "cpu90"]
)
def test_recipes_load_and_build_their_optimizers(name):
  config = configs.load(name)
  params = models.create_model("tiny").init(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )["params"]
  tx = optim.create_optimizer(config, 351)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
  # The step settings are hashable: they key the compiled steps' cache.
  assert steps.make_steps_for(config) == steps.make_steps_for(config)


def test_cpu90_scores_test_after_its_run_not_within_it():
  config = configs.load("cpu90")
  assert config.test_every_epochs == 0 and config.keep_every_epochs == 3
  # Its recorded runs validate and test with flips and one-pixel moves.
  assert models.TTA.of(config) == models.TTA(flip=True, translate_px=1)
  # Its schedule ends at a learning rate of zero: the last state is tested.
  assert config.test_checkpoint == "latest"
  # Its conv kernels step by Muon.
  assert config.optimizer == "muon"
  # As many epochs as fit in the hour, half of them at 24x24.
  assert config.time_budget_minutes == 58.0 and config.warmup_epochs >= 1
  assert config.low_res_epochs / config.num_epochs == 0.5


def test_fast_recipe_trains_resumes_exactly_and_logs_its_schedule(
  dataset, tmp_path, monkeypatch
):
  config = smoke_sized(configs.load("fast"))
  config.test_every_epochs = 2
  config.keep_every_epochs = 1
  config.learning_rate = 0.05
  full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
  expected = train.train_and_evaluate(config, full_dir, dataset)

  real_batches = interrupt_at_batch(monkeypatch, 6)  # mid epoch 2
  with pytest.raises(train.Interrupted, match="saved step 6"):
    train.train_and_evaluate(config, cut_dir, dataset)
  monkeypatch.setattr(data, "train_batches", real_batches)
  assert train.train_and_evaluate(config, cut_dir, dataset) == expected

  # Each epoch's end is kept; the state saved on the interruption is not.
  latest = cut_dir / "checkpoints" / "latest"
  assert checkpointing.kept_steps(latest) == [4, 8]
  states = []
  for workdir in (full_dir, cut_dir):
    ckpt = checkpointing.Checkpoints(workdir, read_only=True)
    states.append(ckpt.restore("latest", tiny_state(config, dataset)))
    ckpt.close()
  (a, meta_a), (b, meta_b) = states
  jax.tree.map(
    np.testing.assert_array_equal,
    (a.params, a.batch_stats, a.opt_state, a.ema),
    (b.params, b.batch_stats, b.opt_state, b.ema),
  )
  # The EMA is checkpointed, and lags the live weights.
  assert not np.allclose(
    a.ema["params"]["classifier"]["kernel"], a.params["classifier"]["kernel"]
  )
  history = meta_b["history"]
  schedule = optim.learning_rate_schedule(config, 4)
  for row in history:  # the logged rate is the epoch's last step's
    np.testing.assert_allclose(
      row["learning_rate"], schedule(4 * row["epoch"] - 1), rtol=1e-5
    )
    assert row["wall_time_s"] > 0
  assert history[1]["wall_time_s"] > history[0]["wall_time_s"]
  # test_every_epochs=2: the test set is scored after the second epoch only.
  assert "test_accuracy" not in history[0]
  assert 0 <= history[1]["test_accuracy"] <= 1
  header = (cut_dir / "metrics.csv").read_text().splitlines()[0]
  assert header.endswith("wall_time_s,test_loss,test_accuracy")
  # The Python API and the evaluate command score what training scored:
  # the best checkpoint's EMA weights, with flip TTA, in bfloat16.
  model = densenet_jax.load(full_dir)
  assert model.tta.flip and model.module.dtype == jnp.bfloat16
  ckpt = checkpointing.Checkpoints(full_dir, read_only=True)
  best, _ = ckpt.restore("best", tiny_state(config, dataset))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, model.variables, best.ema)
  scored = evaluate.evaluate(model, dataset.splits["test"], 48)
  assert scored["accuracy"] == expected["test_accuracy"]
  np.testing.assert_allclose(scored["loss"], expected["test_loss"], rtol=1e-5)


def test_a_run_without_ema_saves_the_state_it_saved_before(
  smoke_config, dataset, tmp_path
):
  state = tiny_state(smoke_config, dataset)
  assert state.ema is None
  ckpt = checkpointing.Checkpoints(tmp_path)
  ckpt.save("latest", state, {"history": []})
  ckpt.wait()
  saved = ckpt._managers["latest"].item_metadata(0)["state"]
  assert set(saved) == {"step", "params", "batch_stats", "opt_state", "rng"}
  restored, _ = ckpt.restore("latest", state)
  ckpt.close()
  assert restored.ema is None
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


def test_a_whitened_stem_gets_no_gradient_and_stays(smoke_config, dataset):
  smoke_config.whiten_stem = True
  smoke_config.optimizer = "sgd"
  smoke_config.weight_decay = 1e-2
  smoke_config.weight_decay_mode = "decoupled"
  model = models.from_config(
    smoke_config, dataset.num_classes, axis_name=steps.AXIS
  )
  state = steps.create_train_state(
    smoke_config, model, (32, 32, 3), images=dataset.splits["train"].images
  )
  batch = next(data.train_batches(dataset.splits["train"], 32, 0, 0))

  def convolutions(frozen_stem):
    jaxpr = jax.make_jaxpr(
      lambda s, b: steps.train_step(s, b, frozen_stem=frozen_stem),
      axis_env=[(steps.AXIS, 1)],
    )(state, batch)
    return str(jaxpr).count("conv_general_dilated")

  # Without the stem kernel's gradient: one convolution fewer.
  assert convolutions(True) == convolutions(False) - 1
  p_train, _ = steps.make_steps_for(smoke_config)
  after, _ = p_train(steps.replicate(state), data.shard(batch, 1))
  kernel = state.params["stem_conv"]["kernel"]
  np.testing.assert_array_equal(after.params["stem_conv"]["kernel"][0], kernel)
  assert np.abs(after.params["stem_conv"]["bias"][0]).max() > 0
