"""Same training on 1, 2 and 4 devices, and on 2 processes of 2 devices.

Each run is a real `python -m densenet_jax.train` in a subprocess with fake
CPU devices (XLA_FLAGS must be set before JAX starts), on the deterministic
synthetic data set.
"""

import csv
import os
import socket
import subprocess
import sys

import flax.jax_utils  # noqa: F401  (flax before the checkpoint helpers)
import jax
import numpy as np
import pytest

from densenet_jax import checkpointing, configs, data, models, steps

# Adam divides by sqrt(v) + eps: with Keras' eps=1e-7 it turns the float
# rounding noise of near-zero gradients (summed in another order on another
# topology) into full-size steps. A large eps compares the math, not that.
ARGS = [
  *("--config", "smoke", "--dataset", "synthetic", "--learning-rate", "0.05"),
  *("--config.adam_eps=1.0", "--config.log_every_steps=2"),
]


def launch(workdir, devices, *extra):
  flags = os.environ.get("XLA_FLAGS", "")
  env = dict(
    os.environ,
    XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}",
  )
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "densenet_jax.train",
      "--workdir",
      str(workdir),
      *ARGS,
      *extra,
    ],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


# Time limits on the subprocesses only catch a hung run: on a loaded
# machine (several runs of the suite sharing 2 cores) a run that takes
# under a minute alone can take many; a limit that is too short fails the
# suite for nothing.
TIMEOUT_S = 1800


def finish(*procs, timeout=TIMEOUT_S):
  outputs = []
  for proc in procs:
    out, _ = proc.communicate(timeout=timeout)
    outputs.append(out)
    assert proc.returncode == 0, out[-3000:]
  return outputs


def launch_two_processes(workdir, *extra):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  return [
    launch(
      workdir,
      2,
      "--coordinator-address",
      f"localhost:{port}",
      "--num-processes",
      "2",
      "--process-id",
      str(i),
      *extra,
    )
    for i in range(2)
  ]


def final_state(workdir):
  config = configs.load("smoke")
  dataset = data.load(
    "synthetic", val_size=config.val_size, train_size=config.train_size
  )
  model = models.from_config(config, dataset.num_classes, steps.AXIS)
  template = steps.create_train_state(config, model, (32, 32, 3))
  ckpt = checkpointing.Checkpoints(workdir, read_only=True)
  state, _ = ckpt.restore("latest", template)
  ckpt.close()
  with open(workdir / "metrics.csv") as f:
    rows = [
      {k: float(v) for k, v in row.items() if not k.endswith("time_s")}
      for row in csv.DictReader(f)
    ]
  return state, rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  # Two processes with two devices each: one epoch, stop, then resume.
  finish(*launch_two_processes(root / "2x2", "--epochs", "1"))
  singles = [launch(root / f"1x{n}", n, "--epochs", "2") for n in (1, 2, 4)]
  resumed = finish(*launch_two_processes(root / "2x2", "--epochs", "2"))
  finish(*singles)
  return root, resumed


@pytest.mark.parametrize("name", ["1x2", "1x4", "2x2"])
def test_same_parameters_and_metrics_on_any_topology(runs, name):
  root, _ = runs
  reference, ref_rows = final_state(root / "1x1")
  state, rows = final_state(root / name)
  assert int(state.step) == int(reference.step) == 8
  # Devices sum their shares of each gradient and statistic in another
  # order than one device does; eight steps grow that rounding to ~1e-4 in
  # a few weights. Unsynchronised BatchNorm statistics or gradients would
  # differ by orders of magnitude more.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-4),
    (state.params, state.batch_stats, state.opt_state),
    (reference.params, reference.batch_stats, reference.opt_state),
  )
  assert len(rows) == len(ref_rows) == 2
  for row, ref in zip(rows, ref_rows):
    for key in ref:
      np.testing.assert_allclose(row[key], ref[key], rtol=1e-4, err_msg=key)


def test_two_processes_resume_and_only_process_zero_reports(runs):
  _, (out0, out1) = runs
  assert "resuming from step 4 (1 epochs done)" in out0
  assert "epoch 2: loss" in out0 and "test: loss" in out0
  assert "epoch 2: loss" not in out1 and "Total Parameters" not in out1


def test_a_batch_the_devices_cannot_split_is_refused(tmp_path):
  proc = launch(tmp_path, 3)
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 1
  assert out.strip().splitlines()[-1] == (
    "error: batch_size=32 does not divide over 3 devices; use a multiple of 3"
  )
  assert not (tmp_path / "checkpoints").exists()


def test_start_up_waits_generously_for_the_other_processes(monkeypatch):
  from densenet_jax import distributed

  calls = []
  monkeypatch.setattr(
    jax.distributed, "initialize", lambda *a, **kw: calls.append(kw)
  )
  monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
  distributed.initialize("localhost:1", 2, 0)
  assert calls[-1]["initialization_timeout"] == 1800
  monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
  distributed.initialize("localhost:1", 2, 0)
  assert calls[-1]["initialization_timeout"] == 90


def test_host_side_collectives_agree_across_processes():
  # What one process decides (a time budget's plan) reaches the others.
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = (
    "import sys\n"
    "from densenet_jax import distributed\n"
    "i = int(sys.argv[1])\n"
    f"distributed.initialize('localhost:{port}', 2, i)\n"
    "print(distributed.main_process_ints([31 + i, 16 - i]),"
    " distributed.any_process(i == 1))\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "JAX_COORDINATOR_ADDRESS"}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", script, str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for out in finish(*procs):
    assert out.strip().splitlines()[-1] == "(31, 16) True"
