"""One epoch of training and its bookkeeping: the steps with a progress bar,
the epoch's row of metrics, early stopping, the best and latest checkpoints,
and the RunRecord that a checkpoint stores so that a resumed run continues
exactly."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from densenet_jax import data, distributed


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
  # With a time budget: seconds from the start to the first epoch's, the
  # [epochs, low-res epochs] planned (densenet_jax.budget) and the number
  # of epochs done when they were.
  first_epoch_started_s: float | None = None
  planned: list | None = None
  planned_after: int | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, meta: dict) -> "RunRecord":
    return cls(**meta)


def compile_then_wait(
  config, p_train, eval_steps, replicated, splits, steps_per_epoch
) -> None:
  """With several processes: compiles the train step and the eval steps,
  then waits for the others.

  The first collective connects the processes, and that waits only 30 s
  for a peer still compiling on a loaded machine; after this barrier all
  processes meet it at once."""
  if jax.process_count() == 1:
    return
  train_batch, val_batch = first_batches(config, splits, steps_per_epoch)
  p_train.lower(replicated, train_batch).compile()
  for p_eval in eval_steps:
    p_eval.lower(replicated, val_batch).compile()
  distributed.barrier("compiled")


def first_batches(config, splits, steps_per_epoch) -> tuple[dict, dict]:
  """This process's rows of the first training and the first validation
  batch, sharded over the local devices: batches to compile or time the
  steps with."""
  n, index, count = (
    jax.local_device_count(),
    jax.process_index(),
    jax.process_count(),
  )
  train = data.train_batches(
    splits["train"],
    config.batch_size,
    config.seed,
    0,
    0,
    steps_per_epoch,
    index,
    count,
  )
  val = data.eval_batches(
    splits["validation"], config.eval_batch_size, index, count
  )
  return data.shard(next(train), n), data.shard(next(val), n)


def train_epoch(
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


def end_epoch(config, state, val, record, ckpt, reporter, extra) -> None:
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
  distributed.log(
    f"epoch {row['epoch']}: loss {row['loss']:.4f} accuracy "
    f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} "
    f"val_accuracy {row['val_accuracy']:.4f}{test} "
    f"({row['epoch_time_s']:.1f} s, {row['wall_time_s']:.0f} s in all)"
  )
  early_stopping(record, row["loss"], config.early_stopping_patience)
  if record.best_val_loss is None or val["loss"] < record.best_val_loss:
    record.best_val_loss = val["loss"]
    ckpt.save("best", state, record.to_json())
    distributed.log(
      f"  val_loss improved: saved the best checkpoint (step {state.step})"
    )
  ckpt.save("latest", state, record.to_json())
  if reporter:
    reporter.epoch_end(history)


def scores_test(config, epoch: int) -> bool:
  """Whether the test set is scored after `epoch` (counted from 1): every
  `test_every_epochs`th epoch and the last one, none when that is 0."""
  every = config.test_every_epochs
  return bool(every) and (epoch % every == 0 or epoch == config.num_epochs)


def gaps(history: list) -> list:
  """The seconds between each epoch after the first and the one before it
  (validation, checkpoints, a plan), from the rows' times."""
  return [
    row["wall_time_s"] - before["wall_time_s"] - row["epoch_time_s"]
    for before, row in zip(history, history[1:])
  ]


def elapsed_before(record: RunRecord) -> float:
  """Seconds a resumed run had already run (time while stopped left out)."""
  history, partial = record.history, record.partial or {}
  done = history[-1].get("wall_time_s", 0.0) if history else 0.0
  return done + partial.get("seconds", 0.0)


def early_stopping(record: RunRecord, loss: float, patience: int) -> None:
  """Keras EarlyStopping(monitor='loss', patience): stop after `patience`
  epochs in a row without a lower training loss."""
  if record.best_train_loss is None or loss < record.best_train_loss:
    record.best_train_loss, record.wait = loss, 0
  else:
    record.wait += 1
    record.stopped_early = bool(patience) and record.wait >= patience
