"""Schedules, weight decay and its mask, optimizer caching (no model runs)."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compilations

from densenet_jax import configs, errors, models, optim

SPE = 10  # steps per epoch


def schedule_config(**fields):
  config = configs.load("default")
  config.update(dict(learning_rate=0.4, num_epochs=10) | fields)
  return config


def values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_constant_is_a_plain_number_as_in_the_reference():
  schedule = optim.learning_rate_schedule(schedule_config(), SPE)
  assert schedule == 0.4  # the reference's optimizer state keeps its shape


def test_warm_up_rises_linearly_from_zero_then_holds():
  schedule = optim.learning_rate_schedule(
    schedule_config(warmup_epochs=1.0), SPE
  )
  np.testing.assert_allclose(
    values(schedule, [0, 5, 10, 50, 99]), [0, 0.2, 0.4, 0.4, 0.4], rtol=1e-6
  )


def test_step_divides_by_ten_at_half_and_three_quarters():
  config = schedule_config(lr_schedule="step", warmup_epochs=1.0)
  schedule = optim.learning_rate_schedule(config, SPE)  # 100 steps
  np.testing.assert_allclose(
    values(schedule, [10, 49, 50, 74, 75, 99]),
    [0.4, 0.4, 0.04, 0.04, 0.004, 0.004],
    rtol=1e-6,
  )


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
def test_decays_from_the_peak_to_the_final_fraction(kind):
  config = schedule_config(
    lr_schedule=kind, warmup_epochs=2.0, final_lr_fraction=0.1
  )
  schedule = optim.learning_rate_schedule(config, SPE)
  lrs = values(schedule, range(101))
  np.testing.assert_allclose(lrs[[0, 10, 20, 100]], [0, 0.2, 0.4, 0.04])
  assert np.all(np.diff(lrs[:21]) > 0) and np.all(np.diff(lrs[20:]) < 0)
  # A quarter of the way down: linear, or half a cosine's (1 + cos).
  left = 0.75 if kind == "onecycle" else 0.5 * (1 + np.cos(np.pi / 4))
  np.testing.assert_allclose(lrs[40], 0.04 + 0.36 * left, rtol=1e-5)


def test_the_logged_learning_rate_follows_the_schedule():
  config = schedule_config(
    optimizer="sgd", lr_schedule="onecycle", warmup_epochs=1.0
  )
  tx = optim.create_optimizer(config, SPE)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(15):
    _, state = tx.update({"w": jnp.zeros(3)}, state, params)
  # The 15th update (step 14) used the value of the schedule at step 14.
  schedule = optim.learning_rate_schedule(config, SPE)
  np.testing.assert_allclose(
    state.hyperparams["learning_rate"], schedule(14), rtol=1e-6
  )


def test_retime_fits_the_schedules_rest_to_a_new_length_from_where_it_is(
  caplog,
):
  config = schedule_config(
    optimizer="sgd",
    lr_schedule="onecycle",
    warmup_epochs=1.0,
    time_budget_minutes=60.0,
  )
  tx = optim.create_optimizer(config, SPE)  # 10 epochs: 100 steps
  params = {"w": jnp.ones(3)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  caplog.set_level(logging.WARNING)

  def run(state, n):
    lrs = []
    for _ in range(n):
      _, state = update({"w": jnp.zeros(3)}, state, params)
      lrs.append(float(state.hyperparams["learning_rate"]))
    return state, np.array(lrs)

  with jax.log_compiles():
    state, before = run(state, 30)
    state, shrunk = run(optim.retime(state, 60), 15)
    state, stretched = run(optim.retime(state, 90), 45)
  # The length is in the state: the update compiles once.
  assert len([m for m in compilations(caplog) if "update_fn" in m]) == 1
  schedule = optim.learning_rate_schedule(config, SPE)
  np.testing.assert_allclose(before, values(schedule, range(30)), rtol=1e-6)
  # Shrunk to 60 steps in all: from the value at step 30 in a straight line
  # to zero at step 60; then stretched to 90 from step 45's value.
  np.testing.assert_allclose(
    shrunk, schedule(30) * (60 - np.arange(30, 45)) / 30, rtol=1e-5
  )
  np.testing.assert_allclose(
    stretched, schedule(30) / 2 * (90 - np.arange(45, 90)) / 45, rtol=1e-5
  )
  assert stretched[-1] > 0 and run(state, 1)[1][0] == 0.0
  # Without a time budget the schedule's length is fixed.
  fixed = optim.create_optimizer(schedule_config(lr_schedule="onecycle"), SPE)
  fixed_state = fixed.init(params)
  assert optim.retime(fixed_state, 60) is fixed_state


def test_only_conv_and_dense_kernels_decay():
  params = models.variable_shapes(models.create_model("tiny"))["params"]
  mask = optim.kernel_mask(params)
  flat = {
    jax.tree_util.keystr(path): m
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  assert flat["['block0']['layer0']['conv2']['kernel']"]
  assert flat["['classifier']['kernel']"]
  assert not flat["['classifier']['bias']"]
  assert not flat["['stem_conv']['bias']"]
  assert not flat["['final_bn']['scale']"] and not flat["['final_bn']['bias']"]
  assert sum(flat.values()) == 8  # stem, 2 layers x 2, 2 transitions, dense


def sgd_step(mode, kernels_only, grads, params, lr=0.1, wd=0.01):
  config = schedule_config(
    optimizer="sgd",
    learning_rate=lr,
    weight_decay=wd,
    weight_decay_mode=mode,
    weight_decay_kernels_only=kernels_only,
    momentum=0.9,
    nesterov=True,
  )
  tx = optim.create_optimizer(config, SPE)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  updates, _ = tx.update(grads, state, params)  # the second step
  return updates


def test_coupled_decay_goes_through_momentum_decoupled_does_not():
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  # Zero gradients: only the decay moves the weights. Nesterov's second
  # step with g = wd * p: trace = g + 0.9 g, update = g + 0.9 trace.
  coupled = sgd_step("l2", True, zeros, params)
  np.testing.assert_allclose(
    coupled["kernel"], -0.1 * 0.02 * (1 + 0.9 * 1.9), rtol=1e-6
  )
  decoupled = sgd_step("decoupled", True, zeros, params)
  np.testing.assert_allclose(decoupled["kernel"], -0.1 * 0.02, rtol=1e-6)
  for updates in (coupled, decoupled):
    np.testing.assert_array_equal(updates["bias"], 0.0)  # masked out
  every = sgd_step("decoupled", False, zeros, params)
  np.testing.assert_allclose(every["bias"], -0.1 * 0.02, rtol=1e-6)


def test_batch_norm_offsets_step_bn_bias_lr_scale_times_as_far():
  shapes = models.variable_shapes(models.create_model("tiny"))["params"]
  params = grads = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)
  settings = dict(optimizer="sgd", learning_rate=0.1, weight_decay=1e-3)
  tx = optim.create_optimizer(schedule_config(**settings), SPE)
  fast = optim.create_optimizer(
    schedule_config(**settings, bn_bias_lr_scale=64.0), SPE
  )
  plain = tx.update(grads, tx.init(params), params)[0]
  scaled = fast.update(grads, fast.init(params), params)[0]
  ratios = {
    jax.tree_util.keystr(path): float(s.ravel()[0] / p.ravel()[0])
    for (path, s), p in zip(
      jax.tree_util.tree_flatten_with_path(scaled)[0],
      jax.tree.leaves(plain),
      strict=True,
    )
  }
  offsets = {k for k in ratios if re.search(r"bn\d?'\]\['bias'\]$", k)}
  assert len(offsets) == 8  # stem, 2 layers x 2, 2 transitions, final
  for name, ratio in ratios.items():
    assert ratio == pytest.approx(64.0 if name in offsets else 1.0), name


def test_equal_settings_give_the_identical_optimizer():
  cosine = dict(optimizer="sgd", lr_schedule="cosine")
  a = optim.create_optimizer(schedule_config(**cosine), SPE)
  b = optim.create_optimizer(schedule_config(**cosine), SPE)
  c = optim.create_optimizer(schedule_config(**cosine), SPE + 1)
  assert a is b and a is not c
  # Fields the optimizer ignores do not make another one (nor recompile).
  adam = optim.create_optimizer(schedule_config(), SPE)
  longer = optim.create_optimizer(schedule_config(num_epochs=50), SPE + 1)
  assert adam is longer


@pytest.mark.parametrize(
  "fields, message",
  [
    (dict(optimizer="lamb"), "unknown optimizer 'lamb'"),
    (dict(lr_schedule="exp"), "unknown lr_schedule 'exp'"),
    (
      dict(optimizer="sgd", weight_decay_mode="l1"),
      "unknown weight_decay_mode 'l1'",
    ),
    (dict(weight_decay=1e-4), "weight_decay=0.0001 needs sgd or muon"),
    (dict(bn_bias_lr_scale=64.0), "bn_bias_lr_scale=64.0 needs sgd or muon"),
  ],
)
def test_unknown_settings_are_refused(fields, message):
  with pytest.raises(errors.UserError, match=message):
    optim.create_optimizer(schedule_config(**fields), SPE)


def test_sgd_without_decay_is_optax_sgd():
  config = schedule_config(optimizer="sgd", learning_rate=0.1)
  tx = optim.create_optimizer(config, SPE)
  reference = optax.sgd(0.1, momentum=0.9, nesterov=True)
  params = {"w": jnp.arange(3.0)}
  grads = {"w": jnp.array([0.5, -1.0, 2.0])}
  s, r = tx.init(params), reference.init(params)
  for _ in range(3):
    u, s = tx.update(grads, s, params)
    v, r = reference.update(grads, r, params)
    np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)


def test_muon_orthogonalizes_conv_kernel_steps_and_leaves_the_rest_to_sgd():
  shapes = models.variable_shapes(models.create_model("tiny"))["params"]
  keys = iter(jax.random.split(jax.random.key(1), 64))
  grads = jax.tree.map(
    lambda s: jax.random.normal(next(keys), s.shape) * 1e-3, shapes
  )
  params = jax.tree.map(jnp.ones_like, grads)
  settings = dict(learning_rate=0.5, momentum=0.9, weight_decay=0.0)
  updates = {}
  for name in ("sgd", "muon"):
    tx = optim.create_optimizer(
      schedule_config(optimizer=name, **settings), SPE
    )
    state = tx.init(params)
    for _ in range(2):
      update, state = tx.update(grads, state, params)
    updates[name] = dict(
      (jax.tree_util.keystr(path), np.asarray(u))
      for path, u in jax.tree_util.tree_flatten_with_path(update)[0]
    )
  convs = [k for k, u in updates["muon"].items() if u.ndim == 4]
  assert len(convs) == 7  # stem, 2 layers x 2, 2 transitions
  for name, sgd_step in updates["sgd"].items():
    muon_step = updates["muon"][name]
    if name not in convs:
      np.testing.assert_allclose(muon_step, sgd_step, rtol=1e-6)
      continue
    # The step is the learning rate times a matrix of singular values near
    # 1 (Newton-Schulz's quintic leaves them within about 0.7-1.2), whatever
    # the gradients' scale: SGD's steps here are thousands of times smaller.
    matrix = muon_step.reshape(-1, muon_step.shape[-1]) / -0.5
    singular = np.linalg.svd(matrix, compute_uv=False)
    assert 0.6 < singular.min() and singular.max() < 1.25, (name, singular)
    assert np.abs(sgd_step).max() < 0.05 * np.abs(muon_step).max()


def test_adam_steps_as_keras_adam_does():
  """100 steps on one gradient sequence: the reference recipe's Adam against
  TF 2.1's formula, alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t), epsilon added
  to sqrt(v), and against tf_keras' own Adam on the same gradients."""
  import os

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  import tf_keras

  config = configs.load("reference")
  tx = optim.create_optimizer(config)
  rng = np.random.default_rng(0)
  # Gradients of mixed scales, some near zero, where the epsilon's place
  # changes the step.
  scales = np.array([1e-9, 1e-7, 1e-5, 1e-3, 1.0], np.float32)
  grads = rng.normal(size=(100, 5)).astype(np.float32) * scales
  param = np.linspace(-1, 1, 5).astype(np.float32)

  params = {"w": jnp.asarray(param)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  m = v = np.zeros(5, np.float64)
  want = param.astype(np.float64)
  variable = tf.Variable(param)
  keras = tf_keras.optimizers.Adam()  # lr 1e-3, b1 .9, b2 .999, eps 1e-7
  for t, g in enumerate(grads, start=1):
    updates, state = step({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
    alpha = 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    want = want - alpha * m / (np.sqrt(v) + 1e-7)
    keras.apply_gradients([(tf.constant(g), variable)])
  np.testing.assert_allclose(params["w"], want, rtol=0, atol=1e-6)
  np.testing.assert_allclose(params["w"], variable.numpy(), rtol=0, atol=1e-6)
  # optax.adam puts epsilon elsewhere: on these gradients, another result.
  adam = optax.adam(1e-3, eps=1e-7)
  other = {"w": jnp.asarray(param)}
  adam_state = adam.init(other)
  for g in grads:
    updates, adam_state = adam.update({"w": jnp.asarray(g)}, adam_state)
    other = optax.apply_updates(other, updates)
  assert np.max(np.abs(other["w"] - want)) > 1e-5


@pytest.mark.parametrize("name", ["adam", "sgd", "muon"])
def test_a_whitened_stem_keeps_its_kernel(name):
  shapes = models.variable_shapes(models.create_model("tiny"))["params"]
  params = grads = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)
  fields = dict(optimizer=name, learning_rate=0.1)
  if name != "adam":
    fields |= dict(weight_decay=1e-3, weight_decay_mode="decoupled")
  steps = {}
  for whiten in (False, True):
    tx = optim.create_optimizer(
      schedule_config(**fields, whiten_stem=whiten), SPE
    )
    update = tx.update(grads, tx.init(params), params)[0]
    steps[whiten] = {
      jax.tree_util.keystr(path): np.asarray(u)
      for path, u in jax.tree_util.tree_flatten_with_path(update)[0]
    }
  stem = "['stem_conv']['kernel']"
  assert np.abs(steps[False][stem]).min() > 0
  np.testing.assert_array_equal(steps[True][stem], 0.0)
  for key, step in steps[False].items():  # every other parameter as before
    if key != stem:
      np.testing.assert_array_equal(steps[True][key], step, err_msg=key)
