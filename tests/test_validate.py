"""Bad configurations end in one line before any data, model or JAX work."""

import json

import ml_collections
import pytest

from densenet_jax import (
  benchmark,
  data,
  errors,
  evaluate,
  models,
  predict,
  show,
  summary,
  train,
  validate,
)


@pytest.fixture
def no_work(monkeypatch):
  """Fails a test that reads data or builds a model."""

  def refuse(*args, **kwargs):
    raise AssertionError("the command read data or built a model")

  for module, name in (
    (data, "load"),
    (data, "ensure_prepared"),
    (models, "from_config"),
  ):
    monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--epochs", "0"], "num_epochs=0 must be a positive integer"),
    (["--batch-size", "-3"], "batch_size=-3 must be a positive integer"),
    (["--learning-rate", "-1"], "learning_rate=-1.0 must be a finite number"),
    (["--learning-rate", "nan"], "learning_rate=nan must be a finite number"),
    (["--learning-rate", "inf"], "learning_rate=inf must be a finite number"),
    (
      ["--config.dtype=float99"],
      "unknown dtype 'float99'; choose one of float32, bfloat16",
    ),
    (["--model", "huge"], "unknown model 'huge'; choose one of reference"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--config.impl=fastest"], "unknown impl 'fastest'"),
    (["--config.optimizer=lamb"], "unknown optimizer 'lamb'"),
    (["--config.lr_schedule=linear"], "unknown lr_schedule 'linear'"),
    (["--config.weight_decay_mode=l1"], "unknown weight_decay_mode 'l1'"),
    (
      ["--config.test_checkpoint=final"],
      "unknown test_checkpoint 'final'; choose one of latest, best",
    ),
    (["--config.label_smoothing=1.0"], "label_smoothing=1.0 must be >= 0.0"),
    (["--config.ema_decay=-0.1"], "ema_decay=-0.1 must be >= 0.0 and < 1.0"),
    (["--config.adam_b2=1.0"], "adam_b2=1.0 must be >= 0.0 and < 1.0"),
    (["--config.adam_eps=0.0"], "adam_eps=0.0 must be a finite number > 0"),
    (
      ["--config.bn_bias_lr_scale=64"],
      "bn_bias_lr_scale=64.0 needs sgd or muon",
    ),
    (["--config.low_res_px=24"], "low_res_px=24 and low_res_epochs=0 go"),
    (
      ["--config.time_budget_minutes=60", "--config.lr_schedule=cosine"],
      "time_budget_minutes=60.0 needs warmup_epochs >= 1 (not 0.0)",
    ),
    (["--config.time_budget_minutes=-1"], "time_budget_minutes=-1.0 must be"),
    (
      ["--config.low_res_px=20", "--config.low_res_epochs=5"],
      "low_res_px=20 must be a multiple of 8 below 32: model reference halves",
    ),
    (
      ["--config.tta_translate_px=-1"],
      "tta_translate_px=-1 must be an integer",
    ),
    (
      ["--config.test_every_epochs=-2"],
      "test_every_epochs=-2 must be an integer >= 0",
    ),
    (["--config.steps_per_epoch=0"], "steps_per_epoch=0 must be a positive"),
    (["--config.augment.zoom_range=-1"], "augment.zoom_range=-1.0 must be"),
    (["--config.augment.cutout_size_px=-2"], "augment.cutout_size_px=-2"),
    (
      [
        "--config.augment.alternating_flips=True",
        "--config.augment.horizontal_flip=False",
      ],
      "augment.alternating_flips=True needs augment.horizontal_flip=True",
    ),
    (["--config.lr_step_fractions=(0.5, 2)"], "lr_step_fractions=(0.5, 2)"),
    (
      ["--config.whiten_stem=True", "--config.model=cpu_wide_stem"],
      "a whitened 3x3 stem needs an even number of filters, at most 54",
    ),
    (["--config.val_size=50000"], "val_size=50000 must be between 1 and 49999"),
    (["--config.nosuch=3"], "unknown config key 'nosuch'; known: adam_b1"),
    (["--config.augment.zoom=1"], "unknown config key 'augment.zoom'; known"),
    (["--config.seed=abc"], "--config.seed=abc: invalid literal for int()"),
    (["--config.seed=1", "stray"], "unrecognized arguments: stray"),
    (["--config.val_size=-5"], "val_size=-5 must be a positive integer"),
    (
      ["--config.train_size=46000"],
      "train_size=46000 must be between 1 and 45000 with val_size=5000",
    ),
    (
      ["--batch-size", "200", "--config.train_size=100"],
      "batch_size=200 is larger than the 100 training images of cifar10",
    ),
    (
      ["--dataset", "synthetic", "--config.val_size=1000"],
      "val_size=1000 must be between 1 and 999",
    ),
  ],
)
def test_train_refuses_bad_config_before_reading_data(
  tmp_path, args, expected, cli_error, no_work
):
  workdir = tmp_path / "run"
  message = cli_error(train.main, ["--workdir", workdir, *args])
  assert expected in message
  assert not workdir.exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path, cli_error, no_work):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  message = cli_error(train.main, ["--workdir", path, "--config", "smoke"])
  assert message == f"error: workdir {path} is a file, not a folder"
  assert path.read_text() == "mine"


def test_the_library_entry_point_checks_too(smoke_config, dataset, tmp_path):
  smoke_config.num_epochs = 0
  with pytest.raises(errors.UserError, match="num_epochs=0"):
    train.train_and_evaluate(smoke_config, tmp_path / "run", dataset)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["tta_flip", "validate_tta", "whiten_stem"])
def test_switches_must_be_booleans(smoke_config, key):
  # A config.json edited by hand: no field types to convert the value.
  config = ml_collections.ConfigDict(smoke_config.to_dict(), type_safe=False)
  config[key] = 1
  with pytest.raises(errors.UserError, match=f"{key}=1 must be True or False"):
    validate.config(config)


def test_every_builtin_config_is_valid():
  from densenet_jax import configs

  for name in (
    "default",
    "reference",
    "paper",
    "fast",
    "cpu_check",
    "cpu90",
    "smoke",
  ):
    validate.config(configs.load(name))


def _damage(workdir, **changes):
  path = workdir / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


@pytest.mark.parametrize("command", [evaluate, predict, summary])
def test_commands_check_the_runs_config_before_any_work(
  command, workdir_copy, cli_error, unchanged, no_work
):
  _damage(workdir_copy, dtype="float99")
  with unchanged(workdir_copy):
    message = cli_error(command.main, ["--workdir", workdir_copy])
  assert "unknown dtype 'float99'; choose one of float32, bfloat16" in (message)


def test_evaluate_checks_its_dataset_first(trained_workdir, cli_error, no_work):
  message = cli_error(
    evaluate.main, ["--workdir", trained_workdir, "--dataset", "mnist"]
  )
  assert "unknown dataset 'mnist'" in message


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--val-size", "50000"], "val_size=50000 must be between 1 and 49999"),
  ],
)
def test_show_samples_checks_before_reading(
  tmp_path, args, expected, cli_error, no_work
):
  out = tmp_path / "s.png"
  message = cli_error(show.main, ["samples", "--output", out, *args])
  assert expected in message


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--model", "huge"], "unknown model 'huge'"),
    (["--batch-size", "0"], "batch_size=0 must be a positive integer"),
    (["--steps", "0"], "steps=0 must be a positive integer"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
  ],
)
def test_benchmark_checks_its_options_first(args, expected, cli_error, no_work):
  message = cli_error(benchmark.main, args)
  assert expected in message


def test_config_overrides_are_typed_by_their_fields(tmp_path):
  _, config = train.parse_config(
    [
      "--workdir",
      str(tmp_path / "run"),
      "--config",
      "smoke",
      "--config.learning_rate=1",
      "--config.augment.enabled=False",
      "--config.lr_step_fractions=(0.25, 0.5)",
      "--config.train_size",
      "96",
      "--config.data_dir=/data/tfds",
    ]
  )
  assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
  assert config.augment.enabled is False
  assert tuple(config.lr_step_fractions) == (0.25, 0.5)
  assert config.train_size == 96
  assert config.data_dir == "/data/tfds"
