"""Shared fixtures: tiny synthetic CIFAR-shaped data and the smoke config."""

import json
import pathlib

import pytest

from densenet_jax import configs, data, xla_flags

# The tests compile far more than they run: at XLA's backend optimisation
# level 0 the reference network's train step compiles in about half the CPU
# time (its steps run about 1.4x slower). Set before JAX starts its CPU
# backend (the first computation); the tests' subprocesses inherit it.
xla_flags.add_flags({"xla_backend_optimization_level": "0"})


def load_experiment(name: str):
  """experiments/NAME.py as a module (experiments/ is no package)."""
  import importlib.util

  path = pathlib.Path(__file__).resolve().parents[1] / "experiments"
  spec = importlib.util.spec_from_file_location(name, path / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def synthetic_dataset(train=128, val=64, test=100, num_classes=10):
  """Tiny learnable data in CIFAR's shapes (see data.synthetic_split)."""
  return data.Dataset(
    "cifar10",
    {
      "train": data.synthetic_split(train, num_classes, seed=0),
      "validation": data.synthetic_split(val, num_classes, seed=1),
      "test": data.synthetic_split(test, num_classes, seed=2),
    },
    data.numbered_class_names(num_classes),
  )


@pytest.fixture(scope="session")
def dataset():
  return synthetic_dataset()


@pytest.fixture
def smoke_config():
  return configs.load("smoke")


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A finished smoke run on data.load("synthetic"), made once per session:
  commands that need only a workdir read their data the way users do."""
  from densenet_jax import train

  config = configs.load("smoke")
  config.dataset = "synthetic"
  # Test scores during training, and the checkpoint of each epoch kept.
  config.test_every_epochs = config.keep_every_epochs = 1
  workdir = tmp_path_factory.mktemp("trained")
  train.train_and_evaluate(config, workdir)
  return workdir


def interrupt_at_batch(monkeypatch, n: int):
  """Makes data.train_batches send this process SIGINT (as Ctrl-C would)
  as it serves its nth batch, counted over all its calls; returns the real
  function, to put back."""
  import os
  import signal

  real = data.train_batches
  served = {"n": 0}

  def interrupting(*args, **kwargs):
    for batch in real(*args, **kwargs):
      served["n"] += 1
      if served["n"] == n:
        os.kill(os.getpid(), signal.SIGINT)
      yield batch

  monkeypatch.setattr(data, "train_batches", interrupting)
  return real


def compilations(caplog) -> list:
  """The "Finished XLA compilation" messages that `jax.log_compiles()` left
  in `caplog` (captured at level WARNING)."""
  return [
    r.getMessage()
    for r in caplog.records
    if r.getMessage().startswith("Finished XLA compilation")
  ]


def set_run_config(workdir, **changes) -> None:
  """Changes fields of the config.json a run saved in `workdir`."""
  path = pathlib.Path(workdir) / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def tree_digest(path) -> dict:
  """Every file and folder under `path` with a hash of its bytes."""
  import hashlib

  root = pathlib.Path(path)
  return {
    str(p.relative_to(root)): (
      hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    )
    for p in sorted(root.rglob("*"))
  }


@pytest.fixture
def unchanged():
  """`with unchanged(workdir): ...` fails if the block alters the tree."""
  import contextlib

  @contextlib.contextmanager
  def check(path):
    before = tree_digest(path)
    yield
    assert tree_digest(path) == before, f"{path} was changed"

  return check


@pytest.fixture
def cli_error(capsys):
  """`cli_error(main, argv)`: runs a command that must fail; returns its
  one-line message after checking the exit status is non-zero."""

  def run(main, argv):
    with pytest.raises(SystemExit) as exit:
      main([str(a) for a in argv])
    code = exit.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None), message
    lines = message.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), message
    return lines[0]

  return run


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
  """A private copy of the trained workdir, to damage."""
  import shutil

  return pathlib.Path(shutil.copytree(trained_workdir, tmp_path / "run"))
