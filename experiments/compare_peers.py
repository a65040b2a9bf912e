"""densenet_jax against its peers, side by side on this machine, in one run.

    python experiments/compare_peers.py --repeats 3 \
      --output experiments/results/compare_peers_cpu

Runs, in each repetition and in a rotating order so that no implementation
always goes first (or last, on a warmer or busier machine):

- ours: `python -m densenet_jax.benchmark` (reference preset, synthetic
  batch resident on the device, no augmentation: the model's cost),
- with --ablations, ours again with plain flax layers (`--impl flax`) and
  without densenet_jax.xla_flags (`--no-xla-defaults`),
- the peers in ../shared/peers/ (or --peers): PyTorch, contiguous and
  channels-last, and Keras/TensorFlow,

each in a fresh process, on the same batch size (128 by default) and fp32,
train steps then eval forward passes of that batch, after one warm-up step.
It prints, and writes to --output as JSON and Markdown, the median images/s
of every implementation and the ratios ours/peer for train and eval. A peer
whose framework is not installed is reported as skipped.
"""

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

from densenet_jax import benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PEERS = ROOT.parent / "shared" / "peers"


def implementations(args) -> dict:
  """name -> command line; each prints one JSON line with train_img_s and
  eval_img_s last."""
  py = sys.executable
  peers = pathlib.Path(args.peers)
  common = ["--batch", str(args.batch_size), "--steps", str(args.steps)]
  ours = [
    py,
    "-m",
    "densenet_jax.benchmark",
    "--model",
    args.model,
    "--batch-size",
    str(args.batch_size),
    "--eval-batch-size",
    str(args.batch_size),
    "--steps",
    str(args.steps),
    "--repeats",
    "1",
    "--warmup",
    "1",
    "--json",
    "-",
  ]
  impls = {"densenet_jax": ours}
  if args.ablations:  # what each speed-up of ours is worth
    impls["densenet_jax-flax-layers"] = ours + ["--impl", "flax"]
    impls["densenet_jax-no-xla-flags"] = ours + ["--no-xla-defaults"]
  return impls | {
    "pytorch": [py, str(peers / "torch_densenet.py")] + common,
    "pytorch-channels-last": [py, str(peers / "torch_densenet.py")]
    + common
    + ["--channels-last"],
    "keras-tf": [py, str(peers / "keras_densenet.py")] + common,
  }


def run_one(name: str, command: list, timeout: float) -> dict:
  """One fresh process; its last JSON line, or why there is none."""
  start = time.perf_counter()
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  try:
    proc = subprocess.run(
      command, capture_output=True, text=True, timeout=timeout, env=env
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  wall = time.perf_counter() - start
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      out = json.loads(line)
      return {
        "train_img_s": float(out["train_img_s"]),
        "eval_img_s": float(out["eval_img_s"]),
        "wall_s": round(wall, 1),
      }
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
  missing = "ModuleNotFoundError" in proc.stderr
  return {"error": ("skipped: " if missing else "failed: ") + tail[0]}


def summarise(runs: dict) -> dict:
  """Medians per implementation, ratios of ours to each peer and to the
  fastest peer, from {name: [run, ...]}."""
  medians = {}
  for name, results in runs.items():
    ok = [r for r in results if "error" not in r]
    if ok:
      medians[name] = {
        key: statistics.median(r[key] for r in ok)
        for key in ("train_img_s", "eval_img_s")
      }
  ratios = {}
  ours = medians.get("densenet_jax")
  peers = {k: v for k, v in medians.items() if not k.startswith("densenet_jax")}
  if ours:
    for name, peer in peers.items():
      ratios[name] = {
        key: ours[key] / peer[key] for key in ("train_img_s", "eval_img_s")
      }
    if peers:
      ratios["fastest peer"] = {
        key: ours[key] / max(p[key] for p in peers.values())
        for key in ("train_img_s", "eval_img_s")
      }
  return {"median": medians, "ours_over": ratios}


def machine() -> dict:
  commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"],
    capture_output=True,
    text=True,
    cwd=ROOT,
  ).stdout.strip()
  return {
    "cpu": benchmark.cpu_model(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "commit": commit or None,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
  }


def markdown(report: dict) -> str:
  m, s = report["machine"], report["summary"]
  lines = [
    f"# densenet_jax vs peers: {report['model']}, batch "
    f"{report['batch_size']}, fp32",
    "",
    f"{m['cpu']} ({m['cpu_count']} CPUs), {m['date']}, commit "
    f"{m['commit']}; {report['repeats']} interleaved repetitions of "
    f"{report['steps']} steps, medians; load average "
    f"{report['load_before']} before, {report['load_after']} after.",
    "",
    f"    {report['command']}",
    "",
    "| implementation | train img/s | eval img/s | runs (train/eval) |",
    "|---|---:|---:|---|",
  ]
  for name, results in report["runs"].items():
    med = s["median"].get(name)
    runs = ", ".join(
      r["error"]
      if "error" in r
      else f"{r['train_img_s']:.1f}/{r['eval_img_s']:.1f}"
      for r in results
    )
    if med:
      lines.append(
        f"| {name} | {med['train_img_s']:.1f} | {med['eval_img_s']:.1f} "
        f"| {runs} |"
      )
    else:
      lines.append(f"| {name} | - | - | {runs} |")
  lines += ["", "| densenet_jax / peer | train | eval |", "|---|---:|---:|"]
  for name, r in s["ours_over"].items():
    lines.append(
      f"| {name} | {r['train_img_s']:.2f}x | {r['eval_img_s']:.2f}x |"
    )
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5, help="per run")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--model", default="reference", help="our preset")
  parser.add_argument("--peers", default=str(DEFAULT_PEERS))
  parser.add_argument(
    "--only", nargs="+", help="implementations to run (default: all)"
  )
  parser.add_argument(
    "--ablations",
    action="store_true",
    help="also ours with plain flax layers, and without the XLA CPU flags",
  )
  parser.add_argument("--timeout", type=float, default=900, help="per run")
  parser.add_argument("--output", help="folder for report.json, report.md")
  return parser.parse_args(argv)


def portable(command: list[str]) -> str:
  """A command line as the report shows it: `python` for this interpreter,
  files by their path in this repository, or by name where outside it."""
  words = []
  for word in command:
    path = pathlib.Path(word)
    if word == sys.executable:
      word = "python"
    elif path.is_absolute():
      inside = path.is_relative_to(ROOT)
      word = str(path.relative_to(ROOT)) if inside else path.name
    words.append(word)
  return " ".join(words)


def main(argv=None) -> dict:
  args = parse_args(argv)
  impls = implementations(args)
  if args.only:
    unknown = set(args.only) - set(impls)
    if unknown:
      sys.exit(f"error: unknown --only {sorted(unknown)}; known {list(impls)}")
    impls = {k: v for k, v in impls.items() if k in args.only}
  runs = {name: [] for name in impls}
  order = list(impls)
  load_before = [round(x, 2) for x in os.getloadavg()]
  for rep in range(args.repeats):
    k = rep % len(order)
    for name in itertools.chain(order[k:], order[:k]):
      result = run_one(name, impls[name], args.timeout)
      runs[name].append(result)
      shown = result.get("error") or (
        f"train {result['train_img_s']:.1f} img/s, "
        f"eval {result['eval_img_s']:.1f} img/s ({result['wall_s']} s)"
      )
      print(f"[{rep + 1}/{args.repeats}] {name}: {shown}", flush=True)
  argv = sys.argv[1:] if argv is None else argv
  report = {
    "command": " ".join(["python experiments/compare_peers.py", *argv]),
    "model": args.model,
    "batch_size": args.batch_size,
    "steps": args.steps,
    "repeats": args.repeats,
    "machine": machine(),
    "load_before": load_before,
    "load_after": [round(x, 2) for x in os.getloadavg()],
    "commands": {k: portable(v) for k, v in impls.items()},
    "runs": runs,
    "summary": summarise(runs),
  }
  text = markdown(report)
  print(text)
  if args.output:
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(text)
  return report


if __name__ == "__main__":
  main()
