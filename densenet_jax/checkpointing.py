"""Orbax checkpoints in WORKDIR/checkpoints/{latest,best}.

Two managers, kept apart so that neither can delete what the other needs
(orbax issue 526: best_fn with max_to_keep can drop the latest step):

- `latest`: the newest state (end of each epoch, and on interruption), which
  a restarted run resumes from;
- `best`: the state with the lowest validation loss so far, which the final
  test evaluation and `densenet_jax.evaluate` use.

Each checkpoint holds the train state as a state dict (params, batch_stats,
opt_state, step, rng, and ema when the run keeps an average of the weights:
fields that are None are left out, so a run without one has the structure
of the runs before that field existed) and a JSON `meta` item (epoch
history, early-stopping counters). Orbax writes into a temporary directory
and renames it when complete, so an interrupted save never leaves a
checkpoint that looks whole.
"""

import pathlib

import flax.serialization
import jax
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

  def __init__(self, workdir, read_only: bool = False):
    self.root = pathlib.Path(workdir).absolute() / "checkpoints"
    self._managers = {
      kind: ocp.CheckpointManager(
        self.root / kind,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1,
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

  def latest_step(self, kind: str = "latest") -> int | None:
    return self._managers[kind].latest_step()

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
