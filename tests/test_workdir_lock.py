"""One run per workdir: a second one is refused, a dead one never blocks."""

import os
import socket
import subprocess
import sys

import pytest

from densenet_jax import errors, train, workdir_lock

HOLD = (
  "import sys, time\n"
  "from densenet_jax import workdir_lock\n"
  "lock = workdir_lock.hold(sys.argv[1])\n"
  "lock.__enter__()\n"
  "print('held', flush=True)\n"
  "time.sleep(600)\n"
)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
  me = f"process {os.getpid()} on host {socket.gethostname()}"
  with workdir_lock.hold(tmp_path):
    assert workdir_lock.holder(tmp_path) == me
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"in use by {me}"):
      with workdir_lock.hold(tmp_path):
        pass
  with workdir_lock.hold(tmp_path):  # released at the end of the block
    pass


def test_a_user_error_leaves_a_new_workdir_absent(tmp_path):
  with pytest.raises(errors.UserError):
    with workdir_lock.hold(tmp_path / "run"):
      raise errors.UserError("no data")
  assert not (tmp_path / "run").exists()


def test_a_second_train_is_refused_and_a_killed_holder_never_blocks(
  workdir_copy, cli_error, unchanged, capsys
):
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(workdir_copy)],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    args = ["--workdir", workdir_copy, "--config", "smoke"]
    args += ["--dataset", "synthetic"]
    with unchanged(workdir_copy):
      message = cli_error(train.main, args)
    assert message == (
      f"error: workdir {workdir_copy} is in use by process {holder.pid} on "
      f"host {socket.gethostname()}; wait for that run to end or use "
      "another --workdir"
    )
  finally:
    holder.kill()  # SIGKILL: no clean-up runs in the holder
    holder.wait()
  assert (
    (workdir_copy / ".lock").read_text().startswith(f"process {holder.pid} ")
  )
  train.main([str(a) for a in args + ["--epochs", "3"]])
  out = capsys.readouterr().out
  assert "resuming from step 8 (2 epochs done)" in out
  assert "epoch 3: loss" in out
