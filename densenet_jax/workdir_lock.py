"""One training run per workdir: an exclusive lock on WORKDIR/.lock.

The kernel releases the lock (`flock`) when its holder exits, even by
`kill -9`, so a lock left by a dead run never blocks a resume. The file
names its holder (process id and host) for the error a second run prints.
"""

import contextlib
import fcntl
import os
import pathlib
import socket

from densenet_jax import errors

LOCK_FILE = ".lock"


class WorkdirBusy(errors.UserError):
  """Another live process holds the workdir."""


def holder(workdir) -> str:
  """Who wrote the lock file last: 'process PID on host HOST'."""
  try:
    text = (pathlib.Path(workdir) / LOCK_FILE).read_text().strip()
  except OSError:
    text = ""
  return text or "another process"


@contextlib.contextmanager
def hold(workdir):
  """Holds WORKDIR/.lock for the block (creating the workdir if needed);
  raises WorkdirBusy, changing nothing, when a live process holds it. A
  block that ends in a UserError leaves the workdir as it found it."""
  workdir = pathlib.Path(workdir)
  created = not workdir.exists()
  path = workdir / LOCK_FILE
  before = path.read_bytes() if path.exists() else None
  workdir.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(
        f"workdir {workdir} is in use by {holder(workdir)}; wait for that "
        "run to end or use another --workdir"
      ) from None
    _write(fd, f"process {os.getpid()} on host {socket.gethostname()}\n")
    try:
      yield
    except errors.UserError:
      if before is None:
        path.unlink()
        if created and not any(workdir.iterdir()):
          workdir.rmdir()
      else:
        _write(fd, before.decode(errors="replace"))
      raise
  finally:
    os.close(fd)  # releases the lock


def _write(fd: int, text: str) -> None:
  os.ftruncate(fd, 0)
  os.pwrite(fd, text.encode(), 0)
