"""Training: the epoch loop around the pmapped steps, checkpoints, the CLI.

    python -m densenet_jax.train --workdir runs/reference

Resumes from WORKDIR/checkpoints/latest when present. Ctrl-C or SIGTERM stops
at the next step boundary, saves the state mid-epoch and exits; running the
same command again continues from that step with identical results.
"""

import argparse
import contextlib
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
  xla_flags,
)


class Interrupted(Exception):
  """Training stopped by a signal after saving the latest state."""


class ConfigError(errors.UserError):
  """A configuration that cannot run, with the value that is wrong."""


def check_batch_sizes(config, num_devices: int) -> None:
  """Global batch sizes must be positive and split evenly over all devices."""
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f"{name}={value!r} must be a positive integer")
    if value % num_devices:
      raise ConfigError(
        f"{name}={value} does not divide over {num_devices} devices; "
        f"use a multiple of {num_devices}"
      )


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


def _new_meta() -> dict:
  return {
    "history": [],  # one metrics row per finished epoch
    "partial": None,  # metric sums of an epoch interrupted midway
    "best_val_loss": None,
    "best_train_loss": None,
    "wait": 0,  # epochs since the training loss last improved
    "stopped_early": False,
  }


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
  check_batch_sizes(config, jax.device_count())
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
    spe = config.steps_per_epoch or data.steps_per_epoch(
      len(dataset.splits["train"]), config.batch_size
    )
    if spe <= 0:
      raise ConfigError(
        f"batch_size={config.batch_size} is larger than the "
        f"{len(dataset.splits['train'])} training images"
      )
    _write_config(workdir, config)
    return _train_and_evaluate(config, workdir, dataset, spe, started)


def _train_and_evaluate(config, workdir, dataset, spe, started) -> dict:
  train_split = dataset.splits["train"]
  model = models.from_config(config, dataset.num_classes, axis_name=steps.AXIS)
  state = steps.create_train_state(
    config, model, train_split.images.shape[1:], spe
  )
  _log(models.summary(model, train_split.images.shape[1:]))
  _log(
    f"{jax.process_count()} process(es), {jax.device_count()} device(s) "
    f"({jax.devices()[0].platform}); global batch {config.batch_size}"
  )

  ckpt = checkpointing.Checkpoints(workdir)
  meta = _new_meta()
  restored = ckpt.restore("latest", state)
  if restored:
    state, meta = restored
    _log(
      f"resuming from step {int(state.step)} "
      f"({len(meta['history'])} epochs done)"
    )
    started -= _elapsed_before(meta)
  p_train, p_eval = steps.make_steps_for(config)
  reporter = (
    reporting.Reporter(workdir, title=f"{config.model} on {config.dataset}")
    if distributed.is_main_process()
    else None
  )
  rstate = flax.jax_utils.replicate(state)
  _compile_then_wait(config, p_train, p_eval, rstate, dataset.splits, spe)
  try:
    with stop_on_signals() as flag:
      stopper = _Stopper(flag, config.log_every_steps)
      while len(meta["history"]) < config.num_epochs:
        if meta["stopped_early"]:
          break
        rstate, stopped = _train_epoch(
          config, p_train, rstate, train_split, spe, meta, stopper
        )
        if stopped:
          raise Interrupted(flag["stop"] or "a signal to another process")
        state = jax.device_get(flax.jax_utils.unreplicate(rstate))
        val = evaluate.evaluate_state(
          p_eval, rstate, dataset.splits["validation"], config.eval_batch_size
        )
        extra = {}
        if config.test_every_epoch:
          test = evaluate.evaluate_state(
            p_eval, rstate, dataset.splits["test"], config.eval_batch_size
          )
          extra = {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
        extra["wall_time_s"] = time.perf_counter() - started
        _end_epoch(config, state, val, meta, ckpt, reporter, extra)
        distributed.barrier(f"epoch_{len(meta['history'])}")  # after plots
        if stopper(int(state.step), force=True):
          raise Interrupted(flag["stop"] or "a signal to another process")
  except Interrupted as stop:
    state = jax.device_get(flax.jax_utils.unreplicate(rstate))
    ckpt.save("latest", state, meta)
    ckpt.wait()
    ckpt.close()
    if reporter:
      reporter.close()
    raise Interrupted(
      f"{stop} received: saved step {int(state.step)} to "
      f"{ckpt.root / 'latest'}; run the same command to resume"
    ) from None
  ckpt.wait()
  if meta["stopped_early"]:
    _log(
      "early stopping: training loss did not improve for "
      f"{config.early_stopping_patience} epochs"
    )
  best = ckpt.restore("best", state)
  if best:
    state = best[0]
  test = evaluate.evaluate_state(
    p_eval,
    flax.jax_utils.replicate(state),
    dataset.splits["test"],
    config.eval_batch_size,
  )
  result = {
    "test_loss": test["loss"],
    "test_accuracy": test["accuracy"],
    "test_examples": test["count"],
    "checkpoint_step": int(state.step),
    "epochs": len(meta["history"]),
    "stopped_early": meta["stopped_early"],
  }
  ckpt.close()
  if reporter:
    reporter.write_json("test_result.json", result)
    reporter.close()
  _log(
    f"test: loss {test['loss']:.4f} accuracy {test['accuracy']:.4f} "
    f"({test['count']} images, checkpoint of step {int(state.step)})"
  )
  return result


def _compile_then_wait(config, p_train, p_eval, rstate, splits, spe) -> None:
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
      splits["train"], config.batch_size, config.seed, 0, 0, spe, index, count
    )
  )
  p_train.lower(rstate, data.shard(batch, n)).compile()
  batch = next(
    data.eval_batches(
      splits["validation"], config.eval_batch_size, index, count
    )
  )
  p_eval.lower(rstate, data.shard(batch, n)).compile()
  distributed.barrier("compiled")


def _train_epoch(config, p_train, rstate, split, spe, meta, stopper):
  """Runs the rest of the current epoch (all of it unless resumed midway),
  keeping the metric sums in meta["partial"]; returns (state, stopped)."""
  epoch = len(meta["history"])
  step = int(rstate.step[0])
  offset = step - epoch * spe
  partial = meta["partial"] or {"loss": 0.0, "accuracy": 0.0, "steps": 0}
  sums = {k: jnp.asarray(partial[k]) for k in ("loss", "accuracy")}
  done = partial["steps"]
  start = time.perf_counter() - partial.get("seconds", 0.0)
  bar = tqdm(
    total=spe,
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
    spe,
    jax.process_index(),
    jax.process_count(),
  )
  stopped = False
  for batch in batches:
    rstate, metrics = p_train(
      rstate, data.shard(batch, jax.local_device_count())
    )
    sums = jax.tree.map(lambda s, m: s + m[0], sums, metrics)
    step, done = step + 1, done + 1
    bar.update(1)
    if done % config.log_every_steps == 0 or done + offset == spe:
      means = {k: float(v) / done for k, v in sums.items()}
      if not np.isfinite(means["loss"]):
        raise FloatingPointError(
          f"training loss is {means['loss']} at step {step} "
          f"(epoch {epoch + 1}); lower the learning rate"
        )
      bar.set_postfix(
        loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}"
      )
    if step % spe and stopper(step):
      stopped = True
      break
  bar.close()
  meta["partial"] = {
    "loss": float(sums["loss"]),
    "accuracy": float(sums["accuracy"]),
    "steps": done,
    "seconds": time.perf_counter() - start,
  }
  return rstate, stopped


def _end_epoch(config, state, val, meta, ckpt, reporter, extra) -> None:
  """Records the epoch (with `extra` columns: wall time since the start,
  test scores), applies early stopping, saves best and latest."""
  partial, history = meta["partial"], meta["history"]
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
  meta["partial"] = None
  test = ""
  if "test_accuracy" in row:
    test = f" test_accuracy {row['test_accuracy']:.4f}"
  _log(
    f"epoch {row['epoch']}: loss {row['loss']:.4f} accuracy "
    f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} "
    f"val_accuracy {row['val_accuracy']:.4f}{test} "
    f"({row['epoch_time_s']:.1f} s, {row['wall_time_s']:.0f} s in all)"
  )
  _early_stopping(meta, row["loss"], config.early_stopping_patience)
  if meta["best_val_loss"] is None or val["loss"] < meta["best_val_loss"]:
    meta["best_val_loss"] = val["loss"]
    ckpt.save("best", state, meta)
    _log(f"  val_loss improved: saved the best checkpoint (step {state.step})")
  ckpt.save("latest", state, meta)
  if reporter:
    reporter.epoch_end(history)


def _elapsed_before(meta: dict) -> float:
  """Seconds a resumed run had already run (time while stopped left out)."""
  history, partial = meta["history"], meta["partial"] or {}
  done = history[-1].get("wall_time_s", 0.0) if history else 0.0
  return done + partial.get("seconds", 0.0)


def _early_stopping(meta: dict, loss: float, patience: int) -> None:
  """Keras EarlyStopping(monitor='loss', patience): stop after `patience`
  epochs in a row without a lower training loss."""
  if meta["best_train_loss"] is None or loss < meta["best_train_loss"]:
    meta["best_train_loss"], meta["wait"] = loss, 0
  else:
    meta["wait"] += 1
    meta["stopped_early"] = bool(patience) and meta["wait"] >= patience


def parse_config(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m densenet_jax.train",
    description="Train a DenseNet on CIFAR (resumes from --workdir).",
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
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override any config field, e.g. --set "
    "augment.enabled=False (repeatable)",
  )
  group = parser.add_argument_group(
    "multi-process runs",
    "one process per host; JAX_COORDINATOR_ADDRESS, SLURM and Open MPI "
    "launches are detected without these flags",
  )
  group.add_argument("--coordinator-address", metavar="HOST:PORT")
  group.add_argument("--num-processes", type=int)
  group.add_argument("--process-id", type=int)
  args = parser.parse_args(argv)
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
  configs.override(config, args.set)
  validate.config(config)
  check_workdir(args.workdir)
  return args, config


def check_workdir(workdir) -> None:
  """The workdir must be a folder or not exist yet (training creates it)."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir {path} is a file, not a folder")


def main(argv=None):
  xla_flags.apply_defaults()  # before JAX starts its backend
  try:
    args, config = parse_config(argv)
    distributed.initialize(
      args.coordinator_address, args.num_processes, args.process_id
    )
    train_and_evaluate(config, args.workdir)
  except Interrupted as stop:
    sys.exit(f"interrupted: {stop}")
  except (errors.UserError, FloatingPointError) as err:
    sys.exit(f"error: {err}")


if __name__ == "__main__":
  main()
