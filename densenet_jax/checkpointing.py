"""Orbax checkpoints in WORKDIR/checkpoints/{latest,best}.

Two managers, kept apart so that neither can delete what the other needs
(orbax issue 526: best_fn with max_to_keep can drop the latest step):

- `latest`: the newest state (end of each epoch, and on interruption), which
  a restarted run resumes from; with `keep_every_steps`, also every state
  whose step is a multiple of it (the run's curve, scored after training:
  `python -m densenet_jax.evaluate --kept`);
- `best`: the state with the lowest validation loss so far, which the final
  test evaluation and `densenet_jax.evaluate` use.

Each checkpoint holds the train state as a state dict (params, batch_stats,
opt_state, step, rng, and ema when the run keeps an average of the weights:
fields that are None are left out, so a run without one has the structure
of the runs before that field existed) and a JSON `meta` item (epoch
history, early-stopping counters). Orbax writes into a temporary directory
and renames it when complete, so an interrupted save never leaves a
checkpoint that looks whole.

`restore_variables` reads only the model's variables of a checkpoint, with a
read-only manager: what evaluation and prediction need, without the
optimizer (densenet_jax.inference).
"""

import contextlib
import pathlib
import sys

import absl.logging
import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from densenet_jax import errors

KINDS = ("latest", "best")


class CheckpointError(errors.UserError):
  """A checkpoint that is missing, unreadable or of another model."""


def _state_dict(state) -> dict:
  """The state's fields as a dict, those that are None left out."""
  full = flax.serialization.to_state_dict(state)
  return {k: v for k, v in full.items() if v is not None}


class Checkpoints:
  """Saves and restores `latest` and `best` train states under a workdir."""

  def __init__(
    self, workdir, read_only: bool = False, keep_every_steps: int = 0
  ):
    self.root = pathlib.Path(workdir).absolute() / "checkpoints"
    self._managers = {
      kind: ocp.CheckpointManager(
        self.root / kind,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1,
          keep_period=(keep_every_steps or None) if kind == "latest" else None,
          create=not read_only,
          read_only=read_only,
          cleanup_tmp_directories=not read_only,
          # Both managers may save the same step at once; in multi-process
          # runs their barriers must not share names.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=kind
          ),
        ),
        item_names=("state", "meta"),
      )
      for kind in KINDS
    }

  def save(self, kind: str, state, meta: dict) -> None:
    """Saves `state` (an unreplicated TrainState) with `meta` as its step."""
    manager = self._managers[kind]
    step = int(jax.device_get(state.step))
    if manager.latest_step() == step:
      return  # already saved, e.g. an interruption right after an epoch end
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_state_dict(state)),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  def restore(self, kind: str, template):
    """Returns (state, meta) of the newest `kind` checkpoint, or None.

    `template` is a TrainState of the expected model whose leaves give the
    shapes and dtypes; a checkpoint that does not fit raises CheckpointError.
    """
    manager = self._managers[kind]
    step = manager.latest_step()
    if step is None:
      return None
    target = jax.tree.map(
      ocp.utils.to_shape_dtype_struct, _state_dict(template)
    )
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as err:  # orbax raises many types; name the place
      raise CheckpointError(
        f"cannot restore the {kind} checkpoint {self.root / kind / str(step)}"
        f": {type(err).__name__}: {str(err).splitlines()[0][:300]}"
      ) from err
    full = flax.serialization.to_state_dict(template)
    state = flax.serialization.from_state_dict(
      template, {k: restored.state.get(k) for k in full}
    )
    return state, restored.meta

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    for manager in self._managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()


@contextlib.contextmanager
def _quiet_orbax():
  """Hides orbax's absl warnings about read-only directories."""
  level = absl.logging.get_verbosity()
  absl.logging.set_verbosity(absl.logging.ERROR)
  try:
    yield
  finally:
    absl.logging.set_verbosity(level)


def _shapes(tree) -> dict:
  """{'params/stem_conv/kernel': shape, ...} of a nested dict of arrays or
  of orbax array metadata."""
  flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _read_only_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  """A manager that reads the checkpoints in `directory` and writes nothing."""
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      create=False, read_only=True, cleanup_tmp_directories=False
    ),
    item_handlers={
      "state": ocp.PyTreeCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
    },
  )


def kept_steps(directory) -> list[int]:
  """The steps of the complete checkpoints in `directory`, oldest first."""
  with _quiet_orbax():
    manager = _read_only_manager(pathlib.Path(directory).absolute())
    try:
      return sorted(manager.all_steps())
    finally:
      manager.close()


def restore_variables(
  directory, expected: dict, what: str = "the model", step: int | None = None
):
  """Reads only `params` and `batch_stats` of the newest checkpoint in
  `directory` (WORKDIR/checkpoints/best or latest), or of its `step`,
  without the optimizer state and without writing anything there.

  `expected` holds the model's variables (arrays or ShapeDtypeStructs); a
  checkpoint with other names or shapes raises CheckpointError naming the
  first difference and `what` the model was expected to be.
  Returns (variables as numpy arrays, meta, step path).
  """
  directory = pathlib.Path(directory).absolute()
  with _quiet_orbax():
    manager = _read_only_manager(directory)
    try:
      if step is None:
        step = manager.latest_step()
      elif step not in manager.all_steps():
        raise CheckpointError(
          f"no complete checkpoint of step {step} in {directory}"
        )
      if step is None:
        raise CheckpointError(
          f"no complete checkpoint in {directory} (an interrupted save "
          "leaves none; run training again to write one)"
        )
      path = directory / str(step)
      try:
        saved = manager.item_metadata(step)["state"]
      except Exception as err:
        raise _unreadable(path, err) from err
      if saved is None or not all(k in saved.tree for k in expected):
        raise CheckpointError(
          f"checkpoint {path} holds no model variables "
          f"({', '.join(expected)}): truncated or not a densenet_jax checkpoint"
        )
      _check_shapes({k: saved.tree[k] for k in expected}, expected, path, what)
      target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected
      )
      try:
        restored = manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
              item=target,
              restore_args=jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
              ),
              partial_restore=True,
            ),
            meta=ocp.args.JsonRestore(),
          ),
        )
      except Exception as err:
        raise _unreadable(path, err) from err
    finally:
      manager.close()
  return dict(restored.state), restored.meta, path


def _unreadable(path, err) -> CheckpointError:
  _hide_closed_loop_errors()
  first = (str(err).splitlines() or [""])[0][:300]
  return CheckpointError(
    f"cannot read checkpoint {path} (truncated or corrupted?): "
    f"{type(err).__name__}: {first}"
  )


def _hide_closed_loop_errors() -> None:
  """After one failed read, tensorstore finishes the restore's other reads
  and calls back into orbax's event loop, closed by then; each call would
  print a "RuntimeError: Event loop is closed" traceback under the one-line
  error. Those, and only those, are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, "_densenet_jax", False):
    return

  def hook(unraisable):
    err = unraisable.exc_value
    if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
      return
    previous(unraisable)

  hook._densenet_jax = True
  sys.unraisablehook = hook


def _check_shapes(saved, expected, path, what) -> None:
  have, want = _shapes(saved), _shapes(expected)
  for name in sorted(want, key=lambda n: (not n.startswith("params"), n)):
    if name not in have:
      raise CheckpointError(
        f"checkpoint {path} was not made by {what}: it has no {name}"
      )
    if have[name] != want[name]:
      raise CheckpointError(
        f"checkpoint {path} was not made by {what}: {name} has shape "
        f"{have[name]} there, {want[name]} expected"
      )
  extra = sorted(set(have) - set(want))
  if extra:
    raise CheckpointError(
      f"checkpoint {path} was not made by {what}: it has {extra[0]}, which "
      "that model lacks"
    )
