"""Train step, eval, early stopping, checkpoints, interruption and resume."""

import functools
import json
import logging
import os
import time

import jax
import numpy as np
import pytest
from conftest import compilations, interrupt_at_batch

from densenet_jax import (
  augment,
  budget,
  checkpointing,
  data,
  epoch,
  evaluate,
  models,
  reporting,
  steps,
  train,
)


def make_state(config, dataset):
  model = models.from_config(config, dataset.num_classes, axis_name=steps.AXIS)
  return steps.create_train_state(config, model, (32, 32, 3))


# Keras' glorot_uniform (the reference network's) draws the same bits; flax's
# lecun_normal (a truncated normal: an inverse error function in float32)
# may round its last bits otherwise.
@pytest.mark.parametrize(
  "kernel_init, rtol",
  [(models.GLOROT_UNIFORM, 0.0), (models.LECUN_NORMAL, 1e-6)],
)
def test_the_initial_state_holds_what_the_optimised_initialiser_draws(
  smoke_config, kernel_init, rtol
):
  """create_train_state compiles the initialiser without XLA's backend
  optimisations (it runs once): the values of XLA's default level."""
  model = models.create_model("tiny", kernel_init=kernel_init)
  state = steps.create_train_state(smoke_config, model, (32, 32, 3))
  optimised = jax.jit(
    functools.partial(model.init, train=False),
    compiler_options={"xla_backend_optimization_level": 3},
  )(jax.random.key(smoke_config.seed), np.zeros((1, 32, 32, 3), np.float32))
  got = {"params": state.params, "batch_stats": state.batch_stats}
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=0),
    got,
    dict(optimised),
  )


def test_a_second_fresh_state_compiles_no_initialiser(smoke_config, caplog):
  steps.create_train_state(
    smoke_config, models.create_model("tiny"), (32, 32, 3)
  )
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    again = models.create_model("tiny")  # an equal model
    steps.create_train_state(smoke_config, again, (32, 32, 3))
  compiled = compilations(caplog)
  assert not [m for m in compiled if "init" in m], compiled


def test_a_state_of_given_variables_is_a_fresh_state_holding_them(
  smoke_config,
):
  """state_with_variables (import_keras' state) is create_train_state's
  with other variables: the same step, rng, optimizer state and EMA."""
  smoke_config.ema_decay = 0.9
  model = models.create_model("tiny")
  fresh = steps.create_train_state(smoke_config, model, (32, 32, 3))
  variables = jax.tree.map(
    lambda x: x + 1.5,
    {"params": fresh.params, "batch_stats": fresh.batch_stats},
  )
  state = steps.state_with_variables(smoke_config, model, variables)
  want = fresh.replace(
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    ema=variables,
  )
  np.testing.assert_array_equal(state.rng, fresh.rng)
  assert int(state.step) == 0
  jax.tree.map(
    np.testing.assert_array_equal,
    (state.params, state.batch_stats, state.opt_state, state.ema),
    (want.params, want.batch_stats, want.opt_state, want.ema),
  )


def test_steps_on_a_fixed_batch_lower_the_loss(smoke_config, dataset):
  p_train, _ = steps.make_steps(None)
  state = steps.replicate(make_state(smoke_config, dataset))
  batch = next(data.train_batches(dataset.splits["train"], 32, 0, 0))
  losses = []
  for _ in range(8):
    state, metrics = p_train(state, data.shard(batch, 1))
    losses.append(float(metrics["loss"][0]))
  assert losses[-1] < losses[0] - 0.1, losses
  assert int(state.step[0]) == 8


def test_a_run_compiles_its_train_and_eval_steps_once_each(
  smoke_config, dataset, tmp_path, monkeypatch, caplog
):
  """The state as first placed on the devices, as each step returns it and
  as restored for the final test share one compilation of each step (step
  functions of this test's own, so that no other test compiled them)."""
  for name in ("_cached_steps", "make_eval_step"):
    fresh = functools.lru_cache(getattr(steps, name).__wrapped__)
    monkeypatch.setattr(steps, name, fresh)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    train.train_and_evaluate(smoke_config, tmp_path, dataset)
  compiled = [
    m
    for m in compilations(caplog)
    if m.startswith("Finished XLA compilation of jit(_fun)")
  ]
  assert len(compiled) == 2, compiled


@pytest.mark.parametrize("validate_tta", [True, False])
def test_validation_takes_the_tests_views_unless_told_not_to(
  smoke_config, dataset, tmp_path, monkeypatch, validate_tta
):
  smoke_config.update(num_epochs=1, tta_flip=True, validate_tta=validate_tta)
  used = {}
  real = evaluate.evaluate_state

  def spy(p_eval, state, split, batch_size):
    name = next(k for k, v in dataset.splits.items() if v is split)
    used.setdefault(name, set()).add(p_eval)
    return real(p_eval, state, split, batch_size)

  monkeypatch.setattr(evaluate, "evaluate_state", spy)
  train.train_and_evaluate(smoke_config, tmp_path, dataset)
  flipped = steps.make_eval_step(models.TTA(flip=True))
  alone = steps.make_eval_step(models.NO_TTA)
  assert used == {
    "validation": {flipped if validate_tta else alone},
    "test": {flipped},
  }
  assert models.TTA.validation_of(smoke_config).views == (
    2 if validate_tta else 1
  )
  assert models.TTA(flip=True, translate_px=1).views == 6


def test_eval_counts_every_example_once_with_a_padded_batch(
  smoke_config, dataset
):
  _, p_eval = steps.make_steps(None)
  state = make_state(smoke_config, dataset)
  split = dataset.splits["test"]  # 100 examples, batches of 48: 48+48+4
  result = evaluate.evaluate_state(p_eval, steps.replicate(state), split, 48)
  logits = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats},
    split.images / 255.0,
  )
  expected_loss = steps.cross_entropy(logits, split.labels).mean()
  expected_acc = (np.argmax(logits, -1) == split.labels).mean()
  assert result["count"] == 100
  np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-5)
  np.testing.assert_allclose(result["accuracy"], expected_acc)


def test_a_low_res_train_step_feeds_the_model_smaller_images(
  smoke_config, dataset
):
  state = make_state(smoke_config, dataset)
  seen = []

  def apply_fn(variables, images, **kwargs):
    seen.append(images.shape)
    return state.apply_fn(variables, images, **kwargs)

  stacked = jax.tree.map(
    lambda x: np.asarray(x)[None], state.replace(apply_fn=apply_fn)
  )
  batch = next(data.train_batches(dataset.splits["train"], 32, 0, 0))
  for image_px in (0, 16):
    step = functools.partial(steps.train_step, image_px=image_px)
    jax.eval_shape(
      jax.vmap(step, axis_name=steps.AXIS), stacked, data.shard(batch, 1)
    )
  assert seen == [(32, 32, 32, 3), (32, 16, 16, 3)]


def test_alternating_flips_take_the_batch_flips(
  smoke_config, dataset, monkeypatch
):
  state = make_state(smoke_config, dataset)
  stacked = jax.tree.map(lambda x: np.asarray(x)[None], state)
  batch = next(data.train_batches(dataset.splits["train"], 32, 0, 0))
  given = []
  real = augment.augment_batch

  def spy(key, images, config, indices=None, flips=None):
    given.append(None if flips is None else flips.shape)
    return real(key, images, config, indices, flips)

  monkeypatch.setattr(augment, "augment_batch", spy)
  for alternating in (False, True):
    settings = augment.settings(
      smoke_config.augment.to_dict() | {"alternating_flips": alternating}
    )
    step = functools.partial(steps.train_step, augment_config=settings)
    jax.eval_shape(
      jax.vmap(step, axis_name=steps.AXIS), stacked, data.shard(batch, 1)
    )
  assert given == [None, (32,)]


def test_the_first_low_res_epochs_use_the_low_res_step(
  smoke_config, dataset, tmp_path, monkeypatch
):
  smoke_config.update(num_epochs=3, low_res_px=16, low_res_epochs=2)
  used = []
  real = epoch.train_epoch

  def spy(config, p_train, *args):
    used.append(p_train)
    return real(config, p_train, *args)

  monkeypatch.setattr(epoch, "train_epoch", spy)
  result = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  low = steps.make_steps_for(smoke_config, 16)[0]
  full = steps.make_steps_for(smoke_config)[0]
  assert low is not full and used == [low, low, full]
  assert result["epochs"] == 3 and np.isfinite(result["test_loss"])


def with_time_budget(config, num_epochs: int, low_res_epochs: int) -> None:
  """A 30-minute budget, one-cycle, its first low_res_epochs at 16x16."""
  config.update(
    time_budget_minutes=30.0,
    lr_schedule="onecycle",
    warmup_epochs=1.0,
    num_epochs=num_epochs,
    low_res_px=16,
    low_res_epochs=low_res_epochs,
  )


def test_a_time_budget_plans_after_the_first_epoch_corrects_and_keeps_it(
  smoke_config, dataset, tmp_path, monkeypatch
):
  with_time_budget(smoke_config, num_epochs=2, low_res_epochs=1)
  asked, corrections = [], []

  def plan(seconds, low_s, full_s, overhead_s, share, done):
    assert done == 1  # one low-res epoch, the first: no further plan
    asked.append((seconds, low_s, full_s, overhead_s, share))
    return (3, 1)

  def more(seconds, epoch_s, overhead_s):
    corrections.append((seconds, epoch_s, overhead_s))
    return [2, 1][len(corrections) - 1]  # 4 epochs after epoch 2, kept

  monkeypatch.setattr(budget, "epochs_within", plan)
  monkeypatch.setattr(budget, "epochs_fitting", more)
  full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
  expected = train.train_and_evaluate(smoke_config, full_dir, dataset)
  assert expected["epochs"] == 4 and len(asked) == 1 and len(corrections) == 2
  seconds, low_s, full_s, overhead_s, share = asked[0]
  assert 0 < low_s <= full_s and 0 <= overhead_s and share == 0.5
  assert 0 < 30 * 60 - seconds < 60  # the time spent so far, and the test's
  for seconds, epoch_s, overhead_s in corrections:
    assert 0 < 30 * 60 - seconds < 60 and epoch_s > 0 and overhead_s >= 0
  saved = json.loads((full_dir / "config.json").read_text())
  assert (saved["num_epochs"], saved["low_res_epochs"]) == (4, 1)
  assert smoke_config.num_epochs == 2  # the caller's config is left alone
  # Epochs of 4 steps: warm-up over the first 4, then a decay to 0 at step
  # 12 (3 epochs), from step 8 on a straight line to 0 at step 16 instead.
  rows = reporting.read_metrics_csv(full_dir / "metrics.csv")
  np.testing.assert_allclose(
    [row["learning_rate"] for row in rows[1:]],
    np.array([5 / 8, 5 / 16, 1 / 16]) * smoke_config.learning_rate,
    rtol=1e-5,
  )

  # Stopped in the middle of epoch 3 (step 10), after the correction: the
  # resumed run keeps the plan and ends the same; after epoch 3 the plan is
  # corrected as in the first run.
  real_batches = interrupt_at_batch(monkeypatch, 12)  # 2 for step-time checks
  corrections.clear()
  with pytest.raises(train.Interrupted, match="saved step 10"):
    train.train_and_evaluate(smoke_config, cut_dir, dataset)
  monkeypatch.setattr(data, "train_batches", real_batches)
  monkeypatch.setattr(budget, "epochs_within", lambda *args: (5, 3))
  corrections[:] = [None]  # the resumed run's next correction keeps 4
  assert train.train_and_evaluate(smoke_config, cut_dir, dataset) == expected
  assert len(asked) == 2 and len(corrections) == 2


def test_a_time_budget_costs_the_test_by_the_validations_time(
  smoke_config, dataset, tmp_path, monkeypatch
):
  """Not by the whole gap between epochs: bookkeeping that a test does not
  repeat (here 1.0 s) fills it beside validation (here at least 0.2 s)."""
  with_time_budget(smoke_config, num_epochs=2, low_res_epochs=1)
  real_evaluate, real_end = evaluate.evaluate_state, epoch.end_epoch
  real_cost, costed = budget.final_test_seconds, []

  def slow_validation(p_eval, state, split, batch_size):
    if split is dataset.splits["validation"]:
      time.sleep(0.2)
    return real_evaluate(p_eval, state, split, batch_size)

  def slow_bookkeeping(*args):
    time.sleep(1.0)
    return real_end(*args)

  def spy(val_s, *args):
    costed.append(val_s)
    return real_cost(val_s, *args)

  monkeypatch.setattr(evaluate, "evaluate_state", slow_validation)
  monkeypatch.setattr(epoch, "end_epoch", slow_bookkeeping)
  monkeypatch.setattr(budget, "final_test_seconds", spy)
  # The plan keeps the 2 epochs: the budget's own would train as many as
  # fit in 30 minutes.
  monkeypatch.setattr(budget, "epochs_within", lambda *args: (2, 1))
  assert (
    train.train_and_evaluate(smoke_config, tmp_path, dataset)["epochs"] == 2
  )
  assert costed and all(0.2 <= s < 1.2 for s in costed), costed


def test_a_time_budget_plans_again_after_each_low_res_epoch(
  smoke_config, dataset, tmp_path, monkeypatch
):
  with_time_budget(smoke_config, num_epochs=4, low_res_epochs=2)
  asked, corrections, used = [], [], []

  def plan(seconds, low_s, full_s, overhead_s, share, done):
    asked.append((low_s, done, share, overhead_s))
    return (4, 2) if done == 1 else (6, 3)  # a third low-res epoch

  def more(seconds, epoch_s, overhead_s):
    corrections.append(epoch_s)
    return 2 if len(corrections) == 1 else 1  # 6 epochs in all, kept

  def spy(config, p_train, *args):
    used.append(p_train)
    return real(config, p_train, *args)

  real = epoch.train_epoch
  monkeypatch.setattr(epoch, "train_epoch", spy)
  monkeypatch.setattr(budget, "epochs_within", plan)
  monkeypatch.setattr(budget, "epochs_fitting", more)
  result = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  low = steps.make_steps_for(smoke_config, 16)[0]
  full = steps.make_steps_for(smoke_config)[0]
  assert used == [low] * 3 + [full] * 3 and result["epochs"] == 6
  # Planned after each low-res epoch from the mean of the last (up to
  # three), then corrected after each full-size one but the last.
  assert [done for _, done, *_ in asked] == [1, 2, 3]
  assert all(share == 0.5 for _, _, share, _ in asked)
  # The gap after the first epoch holds the first plan's timed steps: the
  # second plan takes the gap the first measured, the third the next one.
  history = reporting.read_metrics_csv(tmp_path / "metrics.csv")
  assert asked[1][3] == asked[0][3] and asked[2][3] == epoch.gaps(history)[1]
  times = [row["epoch_time_s"] for row in history]
  np.testing.assert_allclose(
    [low_s for low_s, *_ in asked],
    [times[0], np.mean(times[:2]), np.mean(times[:3])],
    rtol=1e-3,
  )
  assert len(corrections) == 2
  saved = json.loads((tmp_path / "config.json").read_text())
  assert (saved["num_epochs"], saved["low_res_epochs"]) == (6, 3)


def test_batch_sizes_the_devices_cannot_split_are_refused(smoke_config):
  smoke_config.batch_size = 33
  with pytest.raises(
    train.ConfigError, match="batch_size=33 does not divide over 2 devices"
  ):
    data.check_batch_sizes(smoke_config, 2)
  smoke_config.batch_size = 0
  with pytest.raises(train.ConfigError, match="batch_size=0 must be"):
    data.check_batch_sizes(smoke_config, 1)


def test_early_stopping_after_patience_epochs_without_improvement():
  meta = epoch.RunRecord()
  losses = [2.0, 1.5, 1.6, 1.5, 1.7, 1.55]  # best 1.5 at epoch 2
  stopped = []
  for loss in losses:
    epoch.early_stopping(meta, loss, patience=4)
    stopped.append(meta.stopped_early)
  assert stopped == [False] * 5 + [True]
  meta = epoch.RunRecord()
  for loss in [2.0, 2.1, 2.2, 1.9, 2.0, 2.0, 2.0]:
    epoch.early_stopping(meta, loss, patience=4)
  assert not meta.stopped_early  # 1.9 reset the count


def test_training_stops_early_end_to_end(
  smoke_config, dataset, tmp_path, monkeypatch
):
  smoke_config.num_epochs = 10
  real = epoch.early_stopping
  monkeypatch.setattr(  # every epoch's loss is "no better"
    epoch,
    "early_stopping",
    lambda meta, loss, patience: real(meta, 1.0, patience),
  )
  result = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  assert result["stopped_early"] and result["epochs"] == 5


@pytest.mark.parametrize("tested, step", [("best", 12), ("latest", 16)])
def test_best_checkpoint_only_when_validation_loss_improves(
  smoke_config, dataset, tmp_path, monkeypatch, tested, step
):
  smoke_config.num_epochs = 4
  smoke_config.test_checkpoint = tested
  val_losses = iter([2.0, 2.5, 1.5, 1.7])
  real_evaluate = evaluate.evaluate_state

  def scripted(p_eval, state, split, batch_size):
    result = real_evaluate(p_eval, state, split, batch_size)
    if split is dataset.splits["validation"]:
      result["loss"] = next(val_losses)
    return result

  saves = []
  real_save = checkpointing.Checkpoints.save

  def spy(self, kind, state, meta):
    saves.append((kind, int(state.step)))
    return real_save(self, kind, state, meta)

  monkeypatch.setattr(evaluate, "evaluate_state", scripted)
  monkeypatch.setattr(checkpointing.Checkpoints, "save", spy)
  result = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  assert [s for k, s in saves if k == "best"] == [4, 12]  # epochs 1 and 3
  assert [s for k, s in saves if k == "latest"] == [4, 8, 12, 16]
  # The test score is the best's, or the last state's.
  assert (result["checkpoint"], result["checkpoint_step"]) == (tested, step)
  assert os.listdir(tmp_path / "checkpoints" / "best") == ["12"]


def latest_params(workdir, config, dataset):
  ckpt = checkpointing.Checkpoints(workdir, read_only=True)
  state, meta = ckpt.restore("latest", make_state(config, dataset))
  ckpt.close()
  return state, meta


def test_interrupted_run_resumes_to_the_same_parameters(
  smoke_config, dataset, tmp_path, monkeypatch, caplog
):
  full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
  expected = train.train_and_evaluate(smoke_config, full_dir, dataset)

  # Ctrl-C in the middle of epoch 2 (after its first batch, step 5).
  real_batches = interrupt_at_batch(monkeypatch, 6)
  with pytest.raises(train.Interrupted, match="SIGINT received: saved step 6"):
    train.train_and_evaluate(smoke_config, cut_dir, dataset)
  state, meta = latest_params(cut_dir, smoke_config, dataset)
  assert int(state.step) == 6 and len(meta["history"]) == 1
  assert not (cut_dir / "test_result.json").exists()

  monkeypatch.setattr(data, "train_batches", real_batches)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    resumed = train.train_and_evaluate(smoke_config, cut_dir, dataset)
  assert resumed == expected
  # The resumed state is restored into a template of shapes: no
  # initialiser is compiled for a state the checkpoint replaces.
  compiled = compilations(caplog)
  assert not [m for m in compiled if "init" in m], compiled
  a, meta_a = latest_params(full_dir, smoke_config, dataset)
  b, meta_b = latest_params(cut_dir, smoke_config, dataset)
  jax.tree.map(
    np.testing.assert_array_equal,
    (a.params, a.batch_stats, a.opt_state, a.rng),
    (b.params, b.batch_stats, b.opt_state, b.rng),
  )
  strip = [
    {k: v for k, v in row.items() if not k.endswith("time_s")}
    for row in meta_a["history"]
  ]
  assert strip == [
    {k: v for k, v in row.items() if not k.endswith("time_s")}
    for row in meta_b["history"]
  ]
  # The workdir holds everything a user looks at.
  for name in ("metrics.csv", "curves.png", "test_result.json", "config.json"):
    assert (cut_dir / name).is_file(), name
  assert any((cut_dir / "tensorboard").iterdir())
  lines = (cut_dir / "metrics.csv").read_text().splitlines()
  assert lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
  assert len(lines) == 3
  assert (
    json.loads((cut_dir / "test_result.json").read_text())["test_examples"]
    == 100
  )


def test_finished_run_is_not_trained_again(smoke_config, dataset, tmp_path):
  first = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  again = train.train_and_evaluate(smoke_config, tmp_path, dataset)
  assert again == first


def test_workdir_of_another_model_is_refused(smoke_config, dataset, tmp_path):
  (tmp_path / "config.json").write_text(
    json.dumps({"model": "reference", "dataset": "cifar10"})
  )
  with pytest.raises(train.ConfigError, match="model='reference'"):
    train.train_and_evaluate(smoke_config, tmp_path, dataset)
