"""Training: the epoch loop around the pmapped steps, checkpoints, the CLI.

    python -m densenet_jax.train --workdir runs/reference

Resumes from WORKDIR/checkpoints/latest when present. Ctrl-C or SIGTERM stops
at the next step boundary, saves the state mid-epoch and exits; running the
same command again continues from that step with identical results.
"""

import contextlib
import dataclasses
import json
import pathlib
import signal
import sys
import time

import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from densenet_jax import (
  checkpointing,
  cli,
  configs,
  data,
  distributed,
  errors,
  evaluate,
  models,
  reporting,
  steps,
  validate,
  workdir_lock,
)


class Interrupted(Exception):
  """Training stopped by a signal after saving the latest state."""


ConfigError = errors.ConfigError


@contextlib.contextmanager
def stop_on_signals():
  """Turns the first SIGINT/SIGTERM into a flag the loop checks each step."""
  flag = {"stop": None}

  def handler(signum, frame):
    flag["stop"] = signal.Signals(signum).name
    signal.signal(signum, previous[signum])  # a second signal acts at once

  previous = {}
  with contextlib.suppress(ValueError):  # only the main thread has signals
    for sig in (signal.SIGINT, signal.SIGTERM):
      previous[sig] = signal.signal(sig, handler)
  try:
    yield flag
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def _check_workdir_config(workdir: pathlib.Path, config) -> None:
  path = workdir / "config.json"
  if path.exists():
    saved = json.loads(path.read_text())
    for key in ("model", "dataset"):
      if saved.get(key) != config[key]:
        raise ConfigError(
          f"{workdir} holds a run with {key}={saved.get(key)!r}, not "
          f"{config[key]!r}; use another --workdir or the same {key}"
        )


def _write_config(workdir: pathlib.Path, config) -> None:
  if distributed.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")


def _log(*args) -> None:
  if distributed.is_main_process():
    print(*args, flush=True)


class _Stopper:
  """Decides, identically on every process, whether to stop at a step.

  A signal may reach processes at different steps; one that stopped alone
  would leave the others waiting in a collective. With several processes the
  flags are compared every `every` steps; a single process stops at once."""

  def __init__(self, flag: dict, every: int):
    self.flag, self.every = flag, every if jax.process_count() > 1 else 1

  def __call__(self, step: int, force: bool = False) -> bool:
    if not force and step % self.every:
      return False
    return distributed.any_process(self.flag["stop"] is not None)


@dataclasses.dataclass
class RunRecord:
  """What a checkpoint stores beside the train state, as JSON: the finished
  epochs and what a resumed run needs to continue exactly."""

  history: list = dataclasses.field(default_factory=list)  # a row per epoch
  partial: dict | None = None  # metric sums of an epoch interrupted midway
  best_val_loss: float | None = None
  best_train_loss: float | None = None
  wait: int = 0  # epochs since the training loss last improved
  stopped_early: bool = False

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, meta: dict) -> "RunRecord":
    return cls(**meta)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir,
  dataset: data.Dataset | None = None,
) -> dict:
  """Trains (resuming from workdir), then scores the best state on test.

  Process 0 holds the workdir's lock for the run: a second run started on
  the same workdir stops with an error instead of writing checkpoints."""
  started = time.perf_counter()
  workdir = pathlib.Path(workdir)
  validate.config(config, check_sizes=dataset is None)
  check_workdir(workdir)
  data.check_batch_sizes(config, jax.device_count())
  _check_workdir_config(workdir, config)
  lock = (
    workdir_lock.hold(workdir)
    if distributed.is_main_process()
    else contextlib.nullcontext()
  )
  with lock:
    if dataset is None:
      dataset = data.load(
        config.dataset,
        config.data_dir,
        config.val_size,
        config.train_size,
        progress=distributed.is_main_process(),
      )
    steps_per_epoch = config.steps_per_epoch or data.steps_per_epoch(
      len(dataset.splits["train"]), config.batch_size
    )
    if steps_per_epoch <= 0:
      raise ConfigError(
        f"batch_size={config.batch_size} is larger than the "
        f"{len(dataset.splits['train'])} training images"
      )
    _write_config(workdir, config)
    run = _Run(config, workdir, dataset, steps_per_epoch)
    return run.train_and_test(started)


class _Run:
  """One training run: its model, compiled steps, checkpoints and report."""

  def __init__(self, config, workdir, dataset, steps_per_epoch):
    self.config, self.dataset = config, dataset
    self.steps_per_epoch = steps_per_epoch
    image_shape = dataset.splits["train"].images.shape[1:]
    model = models.from_config(
      config, dataset.num_classes, axis_name=steps.AXIS
    )
    self.state = steps.create_train_state(
      config, model, image_shape, steps_per_epoch
    )
    _log(models.summary(model, image_shape))
    _log(
      f"{jax.process_count()} process(es), {jax.device_count()} device(s) "
      f"({jax.devices()[0].platform}); global batch {config.batch_size}"
    )
    self.ckpt = checkpointing.Checkpoints(workdir)
    self.p_train, self.p_eval = steps.make_steps_for(config)
    self.reporter = (
      reporting.Reporter(workdir, title=f"{config.model} on {config.dataset}")
      if distributed.is_main_process()
      else None
    )

  def train_and_test(self, started: float) -> dict:
    """Resumes, trains the remaining epochs, scores the best state on test;
    the checkpoints and the report are closed however it ends."""
    record = RunRecord()
    restored = self.ckpt.restore("latest", self.state)
    if restored:
      self.state, record = restored[0], RunRecord.from_json(restored[1])
      _log(
        f"resuming from step {int(self.state.step)} "
        f"({len(record.history)} epochs done)"
      )
      started -= _elapsed_before(record)
    try:
      self.train(record, started)
      self.ckpt.wait()
      if record.stopped_early:
        _log(
          "early stopping: training loss did not improve for "
          f"{self.config.early_stopping_patience} epochs"
        )
      result = self.test_best(record)
      if self.reporter:
        self.reporter.write_json("test_result.json", result)
      return result
    finally:
      self.ckpt.wait()
      self.ckpt.close()
      if self.reporter:
        self.reporter.close()

  def train(self, record: RunRecord, started: float) -> None:
    """The epochs still to run; on a signal, saves the latest state and
    raises Interrupted."""
    config, splits = self.config, self.dataset.splits
    replicated = flax.jax_utils.replicate(self.state)
    _compile_then_wait(
      config,
      self.p_train,
      self.p_eval,
      replicated,
      splits,
      self.steps_per_epoch,
    )
    try:
      with stop_on_signals() as flag:
        stopper = _Stopper(flag, config.log_every_steps)
        while len(record.history) < config.num_epochs:
          if record.stopped_early:
            break
          replicated, stopped = _train_epoch(
            config,
            self.p_train,
            replicated,
            splits["train"],
            self.steps_per_epoch,
            record,
            stopper,
          )
          if stopped:
            raise Interrupted(flag["stop"] or "a signal to another process")
          self.state = jax.device_get(flax.jax_utils.unreplicate(replicated))
          self.end_epoch(record, replicated, started)
          if stopper(int(self.state.step), force=True):
            raise Interrupted(flag["stop"] or "a signal to another process")
    except Interrupted as stop:
      self.state = jax.device_get(flax.jax_utils.unreplicate(replicated))
      self.ckpt.save("latest", self.state, record.to_json())
      raise Interrupted(
        f"{stop} received: saved step {int(self.state.step)} to "
        f"{self.ckpt.root / 'latest'}; run the same command to resume"
      ) from None

  def end_epoch(self, record: RunRecord, replicated, started: float) -> None:
    """Validation (and test, if asked) of the epoch's state, then its row,
    early stopping and checkpoints."""
    config, splits = self.config, self.dataset.splits
    val = evaluate.evaluate_state(
      self.p_eval, replicated, splits["validation"], config.eval_batch_size
    )
    extra = {}
    if config.test_every_epoch:
      test = evaluate.evaluate_state(
        self.p_eval, replicated, splits["test"], config.eval_batch_size
      )
      extra = {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    extra["wall_time_s"] = time.perf_counter() - started
    _end_epoch(config, self.state, val, record, self.ckpt, self.reporter, extra)
    distributed.barrier(f"epoch_{len(record.history)}")  # after plots

  def test_best(self, record: RunRecord) -> dict:
    """The test scores of the best checkpoint (else of the last state)."""
    best = self.ckpt.restore("best", self.state)
    state = best[0] if best else self.state
    test = evaluate.evaluate_state(
      self.p_eval,
      flax.jax_utils.replicate(state),
      self.dataset.splits["test"],
      self.config.eval_batch_size,
    )
    _log(
      f"test: loss {test['loss']:.4f} accuracy {test['accuracy']:.4f} "
      f"({test['count']} images, checkpoint of step {int(state.step)})"
    )
    return {
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      "test_examples": test["count"],
      "checkpoint_step": int(state.step),
      "epochs": len(record.history),
      "stopped_early": record.stopped_early,
    }


def _compile_then_wait(
  config, p_train, p_eval, replicated, splits, steps_per_epoch
) -> None:
  """With several processes: compiles the steps, then waits for the others.

  The first collective connects the processes, and that waits only 30 s
  for a peer still compiling on a loaded machine; after this barrier all
  processes meet it at once."""
  if jax.process_count() == 1:
    return
  n, index, count = (
    jax.local_device_count(),
    jax.process_index(),
    jax.process_count(),
  )
  batch = next(
    data.train_batches(
      splits["train"],
      config.batch_size,
      config.seed,
      0,
      0,
      steps_per_epoch,
      index,
      count,
    )
  )
  p_train.lower(replicated, data.shard(batch, n)).compile()
  batch = next(
    data.eval_batches(
      splits["validation"], config.eval_batch_size, index, count
    )
  )
  p_eval.lower(replicated, data.shard(batch, n)).compile()
  distributed.barrier("compiled")


def _train_epoch(
  config, p_train, replicated, split, steps_per_epoch, record, stopper
):
  """Runs the rest of the current epoch (all of it unless resumed midway),
  keeping the metric sums in record.partial; returns (state, stopped)."""
  epoch = len(record.history)
  step = int(replicated.step[0])
  offset = step - epoch * steps_per_epoch
  partial = record.partial or {"loss": 0.0, "accuracy": 0.0, "steps": 0}
  sums = {k: jnp.asarray(partial[k]) for k in ("loss", "accuracy")}
  done = partial["steps"]
  start = time.perf_counter() - partial.get("seconds", 0.0)
  bar = tqdm(
    total=steps_per_epoch,
    initial=offset,
    desc=f"epoch {epoch + 1}/{config.num_epochs}",
    unit="step",
    dynamic_ncols=True,
    disable=not distributed.is_main_process(),
  )
  batches = data.train_batches(
    split,
    config.batch_size,
    config.seed,
    epoch,
    offset,
    steps_per_epoch,
    jax.process_index(),
    jax.process_count(),
  )
  stopped = False
  for batch in batches:
    replicated, metrics = p_train(
      replicated, data.shard(batch, jax.local_device_count())
    )
    sums = jax.tree.map(lambda s, m: s + m[0], sums, metrics)
    step, done = step + 1, done + 1
    bar.update(1)
    if done % config.log_every_steps == 0 or done + offset == steps_per_epoch:
      means = {k: float(v) / done for k, v in sums.items()}
      if not np.isfinite(means["loss"]):
        raise FloatingPointError(
          f"training loss is {means['loss']} at step {step} "
          f"(epoch {epoch + 1}); lower the learning rate"
        )
      bar.set_postfix(
        loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}"
      )
    if step % steps_per_epoch and stopper(step):
      stopped = True
      break
  bar.close()
  record.partial = {
    "loss": float(sums["loss"]),
    "accuracy": float(sums["accuracy"]),
    "steps": done,
    "seconds": time.perf_counter() - start,
  }
  return replicated, stopped


def _end_epoch(config, state, val, record, ckpt, reporter, extra) -> None:
  """Records the epoch (with `extra` columns: wall time since the start,
  test scores), applies early stopping, saves best and latest."""
  partial, history = record.partial, record.history
  row = {
    "epoch": len(history) + 1,
    "loss": partial["loss"] / partial["steps"],
    "accuracy": partial["accuracy"] / partial["steps"],
    "val_loss": val["loss"],
    "val_accuracy": val["accuracy"],
    "learning_rate": float(state.opt_state.hyperparams["learning_rate"]),
    "epoch_time_s": partial["seconds"],
    **extra,
  }
  history.append(row)
  record.partial = None
  test = ""
  if "test_accuracy" in row:
    test = f" test_accuracy {row['test_accuracy']:.4f}"
  _log(
    f"epoch {row['epoch']}: loss {row['loss']:.4f} accuracy "
    f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} "
    f"val_accuracy {row['val_accuracy']:.4f}{test} "
    f"({row['epoch_time_s']:.1f} s, {row['wall_time_s']:.0f} s in all)"
  )
  _early_stopping(record, row["loss"], config.early_stopping_patience)
  if record.best_val_loss is None or val["loss"] < record.best_val_loss:
    record.best_val_loss = val["loss"]
    ckpt.save("best", state, record.to_json())
    _log(f"  val_loss improved: saved the best checkpoint (step {state.step})")
  ckpt.save("latest", state, record.to_json())
  if reporter:
    reporter.epoch_end(history)


def _elapsed_before(record: RunRecord) -> float:
  """Seconds a resumed run had already run (time while stopped left out)."""
  history, partial = record.history, record.partial or {}
  done = history[-1].get("wall_time_s", 0.0) if history else 0.0
  return done + partial.get("seconds", 0.0)


def _early_stopping(record: RunRecord, loss: float, patience: int) -> None:
  """Keras EarlyStopping(monitor='loss', patience): stop after `patience`
  epochs in a row without a lower training loss."""
  if record.best_train_loss is None or loss < record.best_train_loss:
    record.best_train_loss, record.wait = loss, 0
  else:
    record.wait += 1
    record.stopped_early = bool(patience) and record.wait >= patience


def parse_config(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.train",
    description="Train a DenseNet on CIFAR (resumes from --workdir).",
    epilog="Any config field: --config.KEY=VALUE (ml_collections' "
    "config_flags), e.g. --config.augment.enabled=False "
    "--config.val_size=10000 (repeatable).",
  )
  parser.add_argument(
    "--workdir",
    required=True,
    help="checkpoints, metrics, TensorBoard events, plots",
  )
  parser.add_argument(
    "--config",
    default="default",
    help="built-in config name or a .py file with "
    "get_config() (default: default, the tutorial recipe)",
  )
  parser.add_argument("--model", help=f"preset: {', '.join(models.PRESETS)}")
  parser.add_argument("--dataset", help="cifar10 or cifar100")
  parser.add_argument(
    "--data-dir",
    help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
  )
  parser.add_argument("--epochs", type=int, dest="num_epochs")
  parser.add_argument("--batch-size", type=int)
  parser.add_argument("--learning-rate", type=float)
  parser.add_argument("--seed", type=int)
  group = parser.add_argument_group(
    "multi-process runs",
    "one process per host; JAX_COORDINATOR_ADDRESS, SLURM and Open MPI "
    "launches are detected without these flags",
  )
  group.add_argument("--coordinator-address", metavar="HOST:PORT")
  group.add_argument("--num-processes", type=int)
  group.add_argument("--process-id", type=int)
  args, overrides = parser.parse_known_args(argv)
  if overrides and not str(overrides[0]).startswith("--config."):
    parser.error(f"unrecognized arguments: {' '.join(map(str, overrides))}")
  config = configs.load(args.config)
  for key in (
    "model",
    "dataset",
    "data_dir",
    "num_epochs",
    "batch_size",
    "learning_rate",
    "seed",
  ):
    if getattr(args, key) is not None:
      config[key] = getattr(args, key)
  config = configs.override(config, overrides)
  validate.config(config)
  check_workdir(args.workdir)
  return args, config


def check_workdir(workdir) -> None:
  """The workdir must be a folder or not exist yet (training creates it)."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir {path} is a file, not a folder")


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args, config = parse_config(argv)
  distributed.initialize(
    args.coordinator_address, args.num_processes, args.process_id
  )
  try:
    return train_and_evaluate(config, args.workdir)
  except Interrupted as stop:
    sys.exit(f"interrupted: {stop}")
  except FloatingPointError as err:
    raise errors.UserError(str(err)) from None


if __name__ == "__main__":
  main()
