"""JAX's multi-process runtime: start it when the run is one of several.

One process per host (or per GPU): each feeds its local devices its rows of
every global batch, the pmapped step's collectives span all devices of all
processes, and process 0 alone writes logs, metrics and plots.
"""

import os

import jax
import numpy as np

from densenet_jax import errors

# How long a process waits for the others: at start-up and at the barriers
# before collectives. Processes drift apart by whatever one of them does
# alone (reading data, compiling, drawing plots), which on a loaded machine
# takes minutes, while Gloo, the CPU collectives, waits only 30 s for its
# peers; a generous limit here, and barriers, keep that wait short.
TIMEOUT_ENV = "DENSENET_JAX_SYNC_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


def timeout_s() -> int:
  """The wait limit: $DENSENET_JAX_SYNC_TIMEOUT_S or 30 minutes."""
  text = os.environ.get(TIMEOUT_ENV, "")
  try:
    return int(text) if text else DEFAULT_TIMEOUT_S
  except ValueError:
    raise errors.UserError(
      f"{TIMEOUT_ENV}={text!r} must be a number of seconds"
    ) from None


def launched_as_several() -> bool:
  """True when the environment says this is one of several processes."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any(
    int(os.environ.get(var, "1") or 1) > 1
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
  )


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Calls jax.distributed.initialize when flags or the environment (JAX's
  variables, SLURM, Open MPI) describe a multi-process run."""
  given = (coordinator_address, num_processes, process_id)
  if all(v is None for v in given) and not launched_as_several():
    return
  try:
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      initialization_timeout=timeout_s(),
    )
  except (ValueError, RuntimeError) as err:
    raise errors.UserError(
      f"cannot start the multi-process runtime (coordinator "
      f"{coordinator_address}, {num_processes} processes, id {process_id}): "
      f"{str(err).splitlines()[0]}"
    ) from err


def log(*args) -> None:
  """print, on the main process only."""
  if is_main_process():
    print(*args, flush=True)


def is_main_process() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (through the coordinator, not a
  collective, so the wait may last up to timeout_s())."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed

  jax_distributed.global_state.client.wait_at_barrier(
    f"densenet_jax_{name}", timeout_s() * 1000
  )


def any_process(flag: bool) -> bool:
  """True on every process if it is True on any (a host-side collective)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


def main_process_ints(values) -> tuple:
  """The main process's integers, on every process (a host-side
  collective): a decision taken on one process's measurements."""
  if jax.process_count() == 1:
    return tuple(values)
  from jax.experimental import multihost_utils

  array = multihost_utils.broadcast_one_to_all(np.array(values, np.int64))
  return tuple(int(v) for v in array)
