"""Training: a run from start (or resume) to test score, and the CLI.

    python -m densenet_jax.train --workdir runs/reference

Resumes from WORKDIR/checkpoints/latest when present. Ctrl-C or SIGTERM stops
at the next step boundary, saves the state mid-epoch and exits; running the
same command again continues from that step with identical results.
"""

import contextlib
import copy
import json
import pathlib
import sys
import time

import flax.jax_utils
import jax
import ml_collections
import numpy as np

from densenet_jax import (
  budget,
  checkpointing,
  cli,
  configs,
  data,
  distributed,
  epoch,
  errors,
  evaluate,
  models,
  optim,
  reporting,
  signals,
  steps,
  validate,
  workdir_lock,
)

ConfigError = errors.ConfigError
Interrupted = signals.Interrupted  # raised after saving, on Ctrl-C or SIGTERM


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


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir,
  dataset: data.Dataset | None = None,
) -> dict:
  """Trains (resuming from workdir), then scores on test the checkpoint
  config.test_checkpoint names.

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
      dataset = data.load_for(config, progress=distributed.is_main_process())
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
    # A copy: a time budget changes num_epochs and low_res_epochs.
    config = copy.deepcopy(config)
    self.config, self.dataset, self.workdir = config, dataset, workdir
    # The share of low-res epochs a time budget keeps, as configured.
    self.low_res_share = (
      config.low_res_epochs / config.num_epochs
      if config.get("low_res_px")
      else 0.0
    )
    self.step_seconds = None  # the low-res and full-size train steps' times
    self.first_gap_s = None  # the gap after the first epoch, before a plan
    self.val_seconds = None  # the last validation's, to cost the test by
    self.steps_per_epoch = steps_per_epoch
    image_shape = dataset.splits["train"].images.shape[1:]
    model = models.from_config(
      config, dataset.num_classes, axis_name=steps.AXIS
    )
    # The state comes with train_and_test: restored, or initialised when
    # there is nothing to resume.
    self.state = None
    self.state_args = (config, model, image_shape, steps_per_epoch)
    distributed.log(models.summary(model, image_shape))
    distributed.log(
      f"{jax.process_count()} process(es), {jax.device_count()} device(s) "
      f"({jax.devices()[0].platform}); global batch {config.batch_size}"
    )
    self.ckpt = checkpointing.Checkpoints(
      workdir, keep_every_steps=config.keep_every_epochs * steps_per_epoch
    )
    self.p_train, self.p_eval = steps.make_steps_for(config)
    self.p_val = steps.make_eval_step(models.TTA.validation_of(config))
    # Progressive resizing: a train step of its own for the low-res epochs.
    self.p_train_low = (
      steps.make_steps_for(config, config.low_res_px)[0]
      if config.get("low_res_px")
      else self.p_train
    )
    self.reporter = (
      reporting.Reporter(workdir, title=f"{config.model} on {config.dataset}")
      if distributed.is_main_process()
      else None
    )

  def train_and_test(self, started: float) -> dict:
    """Resumes, trains the remaining epochs, scores the chosen state on test;
    the checkpoints and the report are closed however it ends."""
    record = epoch.RunRecord()
    # Restored into a template of shapes: no initialiser to compile (2.5 s
    # for cpu_medium on a 2-core CPU, 7 s for the reference network).
    restored = self.ckpt.restore(
      "latest", steps.train_state_shapes(*self.state_args)
    )
    if restored:
      self.state, record = restored[0], epoch.RunRecord.from_json(restored[1])
      if record.planned:  # what the time budget decided, kept
        self.apply_plan(record.planned)
      distributed.log(
        f"resuming from step {int(self.state.step)} "
        f"({len(record.history)} epochs done)"
      )
      started -= epoch.elapsed_before(record)
    else:
      self.state = steps.create_train_state(
        *self.state_args, images=self.dataset.splits["train"].images
      )
    try:
      self.train(record, started)
      self.ckpt.wait()
      if record.stopped_early:
        distributed.log(
          "early stopping: training loss did not improve for "
          f"{self.config.early_stopping_patience} epochs"
        )
      result = self.test_chosen(record)
      if self.reporter:
        self.reporter.write_json("test_result.json", result)
      return result
    finally:
      self.ckpt.wait()
      self.ckpt.close()
      if self.reporter:
        self.reporter.close()

  def train(self, record: epoch.RunRecord, started: float) -> None:
    """The epochs still to run; on a signal, saves the latest state and
    raises Interrupted."""
    config, splits = self.config, self.dataset.splits
    replicated = steps.replicate(self.state)
    epoch.compile_then_wait(
      config,
      self.train_step_of(len(record.history)),
      self.eval_steps(),
      replicated,
      splits,
      self.steps_per_epoch,
    )
    try:
      with signals.stop_on_signals() as flag:
        stopper = signals.Stopper(flag, config.log_every_steps)
        self.start_timing(record, started)
        while len(record.history) < config.num_epochs or self.plan_pending(
          record
        ):
          if record.stopped_early:
            break
          if self.plan_due(record) and self.plan_budget(record, started):
            replicated = steps.replicate(self.state)  # the schedule retimed
          replicated, stopped = epoch.train_epoch(
            config,
            self.train_step_of(len(record.history)),
            replicated,
            splits["train"],
            self.steps_per_epoch,
            record,
            stopper,
          )
          if stopped:
            raise signals.Interrupted(
              flag["stop"] or "a signal to another process"
            )
          self.state = jax.device_get(flax.jax_utils.unreplicate(replicated))
          self.end_epoch(record, replicated, started)
          if stopper(int(self.state.step), force=True):
            raise signals.Interrupted(
              flag["stop"] or "a signal to another process"
            )
    except signals.Interrupted as stop:
      self.state = jax.device_get(flax.jax_utils.unreplicate(replicated))
      self.ckpt.save("latest", self.state, record.to_json())
      raise signals.Interrupted(
        f"{stop} received: saved step {int(self.state.step)} to "
        f"{self.ckpt.root / 'latest'}; run the same command to resume"
      ) from None

  def plan_pending(self, record: epoch.RunRecord) -> bool:
    """Whether a time budget still waits for its first decision."""
    return bool(self.config.time_budget_minutes) and not record.planned

  def plan_due(self, record: epoch.RunRecord) -> bool:
    """Whether to plan before the next epoch: after each epoch, once (a
    resumed run keeps the plan made before its epoch)."""
    done = len(record.history)
    if not (self.config.time_budget_minutes and done):
      return False
    return not record.planned or done > (record.planned_after or 0)

  def plan_budget(self, record: epoch.RunRecord, started: float) -> bool:
    """As many epochs as fit in the time budget (densenet_jax.budget),
    planned after the first epoch and after each further low-res one,
    corrected after each full-size one; whether the plan changed (then the
    state's schedule is retimed)."""
    full_done = record.planned and len(record.history) > (
      self.config.low_res_epochs
    )
    plan, detail = (self.correct_plan if full_done else self.low_res_plan)(
      record, started
    )
    before = record.planned
    record.planned = list(distributed.main_process_ints(plan))
    record.planned_after = len(record.history)
    if record.planned != before:
      self.apply_plan(record.planned)
      self.state = self.state.replace(
        opt_state=optim.retime(
          self.state.opt_state, self.config.num_epochs * self.steps_per_epoch
        )
      )
      distributed.log(
        f"time budget {self.config.time_budget_minutes:g} min: "
        f"{self.config.num_epochs} epochs, {self.config.low_res_epochs} of "
        f"them at low resolution ({detail})"
      )
    return record.planned != before

  def seconds_left(self, started: float, overhead_s: float) -> float:
    """The budget's seconds still free, less the test at the end: the last
    validation's time (before one, the gap between epochs) scaled to the
    test set and its views."""
    splits = self.dataset.splits
    test_s = budget.final_test_seconds(
      overhead_s if self.val_seconds is None else self.val_seconds,
      len(splits["validation"]),
      len(splits["test"]),
      models.TTA.validation_of(self.config).views,
      models.TTA.of(self.config).views,
    )
    spent = time.perf_counter() - started
    return self.config.time_budget_minutes * 60 - test_s - spent

  def low_res_plan(self, record: epoch.RunRecord, started: float):
    """After the first epoch and each further low-res one before any
    full-size one: the last (up to three) epochs' mean time and gaps (the
    first's gap: from its end to now), and the two train steps' times on one
    batch, cost a low-res and a full-size epoch."""
    history = record.history
    low_s = float(np.mean([row["epoch_time_s"] for row in history[-3:]]))
    if len(history) == 1:
      first_started = record.first_epoch_started_s or 0.0  # 0: not recorded
      elapsed = time.perf_counter() - started
      overhead_s = max(elapsed - first_started - low_s, 0.0)
      self.first_gap_s = overhead_s
      took = f"the first took {low_s:.1f} s"
    else:
      overhead_s = self.recent_gap_s(history)
      took = f"the last low-res epochs took {low_s:.1f} s"
    full_s, steps_s = low_s, ""
    if self.low_res_share:
      if self.step_seconds is None:
        self.step_seconds = self.train_step_seconds()
      low, full = self.step_seconds
      # The host's work per step is the same at both sizes: only the
      # steps' own times differ.
      full_s += self.steps_per_epoch * max(full - low, 0.0)
      steps_s = f"; one step {low:.3f} s at low resolution, {full:.3f} s"
    left = self.seconds_left(started, overhead_s)
    plan = budget.epochs_within(
      left, low_s, full_s, overhead_s, self.low_res_share, len(history)
    )
    return plan, (
      f"{took}, a full-size one about {full_s:.1f} s, {overhead_s:.1f} s "
      f"between epochs{steps_s}"
    )

  def correct_plan(self, record: epoch.RunRecord, started: float):
    """After a full-size epoch: as many more as fit at the last (up to
    three) full-size epochs' mean time and gaps."""
    history = record.history
    recent = history[self.config.low_res_epochs :][-3:]
    epoch_s = float(np.mean([row["epoch_time_s"] for row in recent]))
    overhead_s = self.recent_gap_s(history)
    left = self.seconds_left(started, overhead_s)
    more = budget.epochs_fitting(left, epoch_s, overhead_s)
    return (len(history) + more, self.config.low_res_epochs), (
      f"the last full-size epochs took {epoch_s:.1f} s, "
      f"{overhead_s:.1f} s between epochs"
    )

  def recent_gap_s(self, history) -> float:
    """The median of the last (up to three) gaps between epochs, the first
    gap left out: it holds the first plan's timed train steps (16.6 s
    against 3.5-4.7 s for the others in a cpu90 run), not the time every
    epoch adds. Without another one, the gap after the first epoch
    as the first plan measured it."""
    gaps = epoch.gaps(history)
    if len(gaps) > 1:
      return float(np.median(gaps[1:][-3:]))
    return self.first_gap_s if self.first_gap_s is not None else gaps[0]

  def start_timing(self, record: epoch.RunRecord, started: float) -> None:
    """With a time budget, before a fresh run's first epoch: its train step
    and eval steps compile (on copies of the state), so that the first
    epoch and its validation take the time later ones will."""
    if not self.plan_pending(record) or record.history or record.partial:
      return
    train_batch, val_batch = epoch.first_batches(
      self.config, self.dataset.splits, self.steps_per_epoch
    )
    calls = [(self.train_step_of(0), train_batch)]
    calls += [(p_eval, val_batch) for p_eval in self.eval_steps()]
    for step, batch in calls:
      jax.block_until_ready(step(steps.replicate(self.state), batch))
    record.first_epoch_started_s = time.perf_counter() - started

  def train_step_seconds(self) -> tuple[float, float]:
    """The low-res and the full-size train step's seconds, timed on one
    batch with copies of the state, taking turns, once the epoch's
    checkpoints are written (in other threads, which the timed steps would
    share the cores with)."""
    self.ckpt.wait()
    batch = epoch.first_batches(
      self.config, self.dataset.splits, self.steps_per_epoch
    )[0]
    low, full = budget.seconds_per_step(
      (self.p_train_low, self.p_train),
      [steps.replicate(self.state) for _ in range(2)],
      batch,
    )
    return low, full

  def apply_plan(self, plan) -> None:
    """Sets the epochs a time budget decided in the config and its
    config.json (the schedule's length is in the optimizer state)."""
    self.config.num_epochs, self.config.low_res_epochs = plan
    _write_config(self.workdir, self.config)

  def eval_steps(self) -> tuple:
    """The eval steps the run compiles: validation's, and the test's when
    that averages other views."""
    return tuple(dict.fromkeys((self.p_val, self.p_eval)))

  def train_step_of(self, epoch_index: int):
    """The train step of an epoch (counted from 0): the low-res one for
    the first low_res_epochs."""
    if epoch_index < self.config.get("low_res_epochs", 0):
      return self.p_train_low
    return self.p_train

  def end_epoch(
    self, record: epoch.RunRecord, replicated, started: float
  ) -> None:
    """Validation (and test, in the epochs that score it) of the epoch's
    state, then its row, early stopping and checkpoints."""
    config, splits = self.config, self.dataset.splits
    val_started = time.perf_counter()
    val = evaluate.evaluate_state(
      self.p_val, replicated, splits["validation"], config.eval_batch_size
    )
    self.val_seconds = time.perf_counter() - val_started
    extra = {}
    if epoch.scores_test(config, len(record.history) + 1):
      test = evaluate.evaluate_state(
        self.p_eval, replicated, splits["test"], config.eval_batch_size
      )
      extra = {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    extra["wall_time_s"] = time.perf_counter() - started
    epoch.end_epoch(
      config, self.state, val, record, self.ckpt, self.reporter, extra
    )
    distributed.barrier(f"epoch_{len(record.history)}")  # after plots

  def test_chosen(self, record: epoch.RunRecord) -> dict:
    """The test scores of the checkpoint config.test_checkpoint names: the
    best one (else the last state), or the last state."""
    kind, state = self.config.test_checkpoint, self.state
    if kind == "best":
      best = self.ckpt.restore("best", self.state)
      state = best[0] if best else self.state
    test = evaluate.evaluate_state(
      self.p_eval,
      steps.replicate(state),
      self.dataset.splits["test"],
      self.config.eval_batch_size,
    )
    distributed.log(
      f"test: loss {test['loss']:.4f} accuracy {test['accuracy']:.4f} "
      f"({test['count']} images, {kind} checkpoint, step {int(state.step)})"
    )
    return {
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      "test_examples": test["count"],
      "checkpoint": kind,
      "checkpoint_step": int(state.step),
      "epochs": len(record.history),
      "stopped_early": record.stopped_early,
    }


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
  except signals.Interrupted as stop:
    sys.exit(f"interrupted: {stop}")
  except FloatingPointError as err:
    raise errors.UserError(str(err)) from None


if __name__ == "__main__":
  main()
