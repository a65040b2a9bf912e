"""Runs a training command and records its result with provenance.

    python experiments/record_run.py --name cpu_check --workdir runs/cpu \
      -- python -m densenet_jax.train --config cpu_check --workdir runs/cpu

Writes experiments/results/NAME/: result.json (command, config, commit,
hardware, wall time, final train/validation/test accuracy, best test
accuracy and the wall time at which the test accuracy first reached
--target, the machine's load while it ran: other processes share the CPUs)
and copies of the run's config.json, metrics.csv, curves.png and
test_result.json. With --time-limit, the command gets SIGTERM when the time
is up (the trainer saves and stops; running it again resumes) and the
partial run is recorded; so it is when the recorder itself gets Ctrl-C or
SIGTERM, which it passes on to the command (a second one stops the trainer
at once, unsaved). With --score-kept, once the command has ended (out
of its wall time), `python -m densenet_jax.evaluate --kept` scores the
checkpoints the run kept (keep_every_epochs) on the test set, and their
scores (kept_test.csv, kept_test_curves.png) stand for the test scores
during training in result.json.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import NamedTuple

from densenet_jax import benchmark

ROOT = pathlib.Path(__file__).resolve().parent.parent
COPIED = ("config.json", "metrics.csv", "curves.png", "test_result.json")


def git(*args) -> str:
  out = subprocess.run(
    ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
  )
  return out.stdout.strip()


def hardware() -> dict:
  info = {
    "platform": platform.platform(),
    "cpu_cores": os.cpu_count(),
    "cpu": benchmark.cpu_model(),
  }
  probe = subprocess.run(
    [
      sys.executable,
      "-c",
      "import jax; d = jax.devices(); print(len(d), d[0].platform, "
      "d[0].device_kind)",
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  info["jax_devices"] = probe.stdout.strip()
  return info


class LoadSampler(threading.Thread):
  """Samples the 1-minute load average every `every` seconds."""

  def __init__(self, every: float = 15.0):
    super().__init__(daemon=True)
    self.every, self.samples = every, []
    self.done = threading.Event()

  def run(self):
    while not self.done.is_set():
      self.samples.append(round(os.getloadavg()[0], 2))
      self.done.wait(self.every)


def history(path: pathlib.Path) -> list[dict]:
  """The rows of a metrics.csv (a run's, or kept_test.csv), [] if none."""
  if not path.exists():
    return []
  from densenet_jax import reporting

  return reporting.read_metrics_csv(path)


def summarise(rows: list[dict], test: dict | None, target: float) -> dict:
  summary = {"epochs_done": len(rows)}
  if not rows:
    return summary
  last = rows[-1]
  summary["final_train_accuracy"] = last["accuracy"]  # running, augmented
  summary["final_val_accuracy"] = last["val_accuracy"]
  if test:
    summary["test_accuracy"] = test["test_accuracy"]
    summary["test_checkpoint_step"] = test["checkpoint_step"]
  tested = [row for row in rows if "test_accuracy" in row]
  if tested:
    scores = [row["test_accuracy"] for row in tested]
    summary["best_test_accuracy_per_epoch"] = max(scores)
    summary["final_test_accuracy_per_epoch"] = scores[-1]
    reached = [r["wall_time_s"] for r in tested if r["test_accuracy"] >= target]
    summary[f"wall_time_s_to_{target:.2%}"] = reached[0] if reached else None
  return summary


def score_kept(workdir: pathlib.Path, out: pathlib.Path) -> list[dict]:
  """Scores the run's kept checkpoints on test (after its timed command);
  returns its history with their test scores, and copies their files."""
  subprocess.run(
    [sys.executable, "-m", "densenet_jax.evaluate", "--kept"]
    + ["--workdir", str(workdir)],
    check=False,
  )
  for name in ("kept_test.csv", "kept_test_curves.png"):
    if (workdir / "eval" / name).exists():
      shutil.copy(workdir / "eval" / name, out / name)
  return history(workdir / "eval" / "kept_test.csv")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--name", required=True, help="experiments/results/NAME")
  parser.add_argument("--workdir", required=True, help="the run's --workdir")
  parser.add_argument("--target", type=float, default=0.9007)
  parser.add_argument("--time-limit", type=float, help="seconds, then SIGTERM")
  parser.add_argument("--results", default=str(ROOT / "experiments/results"))
  parser.add_argument(
    "--score-kept",
    action="store_true",
    help="score the kept checkpoints on test after the command",
  )
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  return args, command


class Timed(NamedTuple):
  """How the recorded command ran."""

  returncode: int
  timed_out: bool  # stopped by --time-limit
  interrupted_by: str | None  # the signal that stopped the recorder, if any
  started: float  # time.time() at its start
  wall: float  # seconds
  cpu_s: float  # CPU seconds of its processes
  start_load: tuple  # os.getloadavg() at its start
  samples: list  # 1-minute load averages while it ran


def run_timed(command, time_limit) -> Timed:
  """Runs `command`, with SIGTERM after `time_limit` seconds, or on each
  SIGINT or SIGTERM the recorder gets: the command runs in a session of
  its own, so that only the recorder hears a terminal's Ctrl-C and the
  command gets one signal for each, not two at once."""
  sampler = LoadSampler()
  sampler.start()
  started = time.time()
  start_load = os.getloadavg()
  proc = subprocess.Popen(command, start_new_session=True)
  interrupted = []

  def pass_on(signum, frame):
    interrupted.append(signal.Signals(signum).name)
    proc.send_signal(signal.SIGTERM)  # the trainer saves and exits

  previous = {
    sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)
  }
  timed_out = False
  try:
    proc.wait(timeout=time_limit)
  except subprocess.TimeoutExpired:
    timed_out = not interrupted
    proc.send_signal(signal.SIGTERM)
    proc.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  wall = time.time() - started
  sampler.done.set()
  sampler.join()
  children = os.times()
  cpu_s = children.children_user + children.children_system
  samples = sampler.samples or [start_load[0]]
  return Timed(
    proc.returncode,
    timed_out,
    interrupted[0] if interrupted else None,
    started,
    wall,
    cpu_s,
    start_load,
    samples,
  )


def main():
  args, command = parse_args()
  workdir = pathlib.Path(args.workdir)
  out = pathlib.Path(args.results) / args.name
  out.mkdir(parents=True, exist_ok=True)

  # The code that runs is the code of now, whatever changes meanwhile.
  commit = git("rev-parse", "HEAD")
  changed = git(
    "status", "--porcelain", "--", "densenet_jax", ":(glob)experiments/*.*"
  )
  run = run_timed(command, args.time_limit)

  test_path = workdir / "test_result.json"
  test = json.loads(test_path.read_text()) if test_path.exists() else None
  config_path = workdir / "config.json"
  config = json.loads(config_path.read_text()) if config_path.exists() else None
  start_time = datetime.datetime.fromtimestamp(run.started)
  rows = history(workdir / "metrics.csv")
  if args.score_kept and not run.interrupted_by:
    rows = score_kept(workdir, out) or rows
  result = {
    "name": args.name,
    "command": " ".join(command),
    "returncode": run.returncode,
    "stopped_at_time_limit": run.timed_out,
    "interrupted_by": run.interrupted_by,
    "started": start_time.isoformat(" ", "seconds"),
    "wall_time_s": round(run.wall, 1),
    "commit": commit,
    "uncommitted_changes": bool(changed),
    "hardware": hardware(),
    "load_average_1m": {
      "at_start": [round(x, 2) for x in run.start_load],
      "min": min(run.samples),
      "mean": round(sum(run.samples) / len(run.samples), 2),
      "max": max(run.samples),
      "samples_every_15s": run.samples,
    },
    # CPU seconds the run used / wall seconds: the cores it actually got.
    "cores_used_on_average": round(run.cpu_s / run.wall, 2),
    **summarise(rows, test, args.target),
    "test_scored_after_the_run": args.score_kept and not run.interrupted_by,
    "config": config,
  }
  (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
  for name in COPIED:
    if (workdir / name).exists():
      shutil.copy(workdir / name, out / name)
  shown = {k: v for k, v in result.items() if k != "config"}
  print(json.dumps(shown, indent=2))
  sys.exit(run.returncode if not run.timed_out else 0)


if __name__ == "__main__":
  main()
