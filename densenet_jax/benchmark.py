"""Throughput of the training and eval steps that train.py runs.

    python -m densenet_jax.benchmark                    # reference, batch 128
    python -m densenet_jax.benchmark --dtype bfloat16 --batch-size 256
    python -m densenet_jax.benchmark --devices 2        # 2 fake CPU devices
    python -m densenet_jax.benchmark --mode pipeline --dataset cifar10

Images per second are medians over --repeats timed runs of --steps steps,
after a warm-up; compilation is timed separately. `--mode model` (default)
feeds one synthetic batch that stays on the devices to the train step
without augmentation: the model's cost, comparable to the peers in
experiments/. `--mode pipeline` times the augmenting train step of a real
run, fed from the in-memory data set through data.train_batches, and each
part alone: the host batches, the augmentation, the step on a resident
batch. Prints a table; --json writes the numbers (- for stdout, one line);
--summarize puts the JSON files of several runs in one markdown table.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m densenet_jax.benchmark", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--model", default="reference", help="preset name")
  parser.add_argument("--impl", default="fast", choices=("fast", "flax"))
  parser.add_argument("--batch-size", type=int, default=128, help="global")
  parser.add_argument("--eval-batch-size", type=int, help="default: batch")
  parser.add_argument(
    "--dtype", default="float32", choices=("float32", "bfloat16")
  )
  parser.add_argument(
    "--devices",
    type=int,
    help="CPU only: fake this many devices (XLA's host device count)",
  )
  parser.add_argument(
    "--mode", default="model", choices=("model", "pipeline", "eval")
  )
  parser.add_argument(
    "--dataset",
    default="synthetic",
    help="pipeline mode: cifar10, cifar100 or synthetic",
  )
  parser.add_argument("--data-dir")
  parser.add_argument("--steps", type=int, default=4, help="per timed run")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps")
  parser.add_argument(
    "--whiten-stem",
    action="store_true",
    help="the stem whitened and frozen (config whiten_stem): its kernel "
    "gradient is not computed",
  )
  parser.add_argument(
    "--no-xla-defaults",
    action="store_true",
    help="do not add densenet_jax.xla_flags' CPU flags",
  )
  parser.add_argument("--json", metavar="PATH", help="write results; - prints")
  parser.add_argument(
    "--summarize",
    nargs="+",
    metavar="JSON",
    help="print earlier --json results as one markdown table; run nothing",
  )
  return parser.parse_args(argv)


def _median_rate(fn, images: int, steps: int, repeats: int) -> dict:
  """Images/s of `steps` calls of fn (which blocks at the end), per run."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(steps)
    rates.append(images * steps / (time.perf_counter() - start))
  return {"img_s": statistics.median(rates), "runs": rates}


def _peak_host_mb() -> float:
  # ru_maxrss is in KiB on Linux, bytes on macOS.
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _device_peak_mb(jax):
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name (Linux's /proc/cpuinfo, else platform's guess),
  with its family, model and widest vector instructions where Linux names
  them: one cloud model name ("AMD EPYC") covers several generations."""
  try:
    with open(cpuinfo) as f:
      first_cpu = f.read().split("\n\n")[0]
  except OSError:
    return platform.processor()
  fields = {}
  for line in first_cpu.splitlines():
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  if "model name" not in fields:
    return platform.processor()
  details = [
    f"{label} {fields[key]}"
    for key, label in (("cpu family", "family"), ("model", "model"))
    if key in fields
  ]
  flags = fields.get("flags", "").split()
  details += [name for flag, name in _VECTORS if flag in flags][:1]
  name = fields["model name"]
  return f"{name} ({', '.join(details)})" if details else name


_VECTORS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


def _environment(jax) -> dict:
  def git(*cmd):
    try:
      out = subprocess.run(
        ("git",) + cmd,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(__file__),
        timeout=10,
      )
      return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
      return None

  return {
    "commit": git("rev-parse", "--short", "HEAD"),
    "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_avg": [round(x, 2) for x in os.getloadavg()],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def check_args(args) -> None:
  """The options, checked before any model or data work."""
  from densenet_jax import errors, validate

  validate.name("model", args.model)
  validate.name("dataset", args.dataset)
  for key in ("batch_size", "eval_batch_size", "steps", "repeats", "devices"):
    if getattr(args, key) is not None:
      validate.positive_int(key, getattr(args, key))
  if args.warmup < 0:
    raise errors.UserError(f"warmup={args.warmup} must be >= 0")


def run(args) -> dict:
  """Compiles and times the steps `args` describe; returns the numbers."""
  import jax

  from densenet_jax import augment, configs, data, models, steps

  config = configs.load("default")
  config.model, config.dtype, config.impl = args.model, args.dtype, args.impl
  config.batch_size = args.batch_size
  config.eval_batch_size = args.eval_batch_size or args.batch_size
  config.whiten_stem = args.whiten_stem
  data.check_batch_sizes(config, jax.device_count())
  if args.mode == "pipeline":
    val_size = 100 if args.dataset == "synthetic" else config.val_size
    dataset = data.load(args.dataset, args.data_dir, val_size, progress=False)
    split = dataset.splits["train"]
    num_classes = dataset.num_classes
  else:
    split = data.synthetic_split(max(config.batch_size, 1), seed=0)
    num_classes = 10
  model = models.from_config(config, num_classes, axis_name=steps.AXIS)
  state = steps.create_train_state(
    config, model, split.images.shape[1:], images=split.images
  )
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  augment_config = (
    augment.settings(config.augment) if args.mode == "pipeline" else None
  )
  result = {
    "model": config.model,
    "impl": args.impl,
    "params": int(n_params),
    "batch_size": config.batch_size,
    "eval_batch_size": config.eval_batch_size,
    "dtype": config.dtype,
    "mode": args.mode,
    "whiten_stem": args.whiten_stem,
    "dataset": args.dataset if args.mode == "pipeline" else "synthetic",
  }
  result["env"] = _environment(jax)
  timers = _Timers(args, config, split, state, augment_config)
  timed = {}
  if args.mode != "eval":
    timed["train"] = timers.train(result)
  timed["eval"] = timers.eval(result)
  if args.mode == "pipeline":
    timed.update(timers.pipeline())
  for name, t in timed.items():
    result[f"{name}_img_s"] = t["img_s"]
    result[f"{name}_runs_img_s"] = t["runs"]
  result["peak_host_mb"] = _peak_host_mb()
  result["peak_device_mb"] = _device_peak_mb(jax)
  return result


class _Timers:
  """The train, eval and input-pipeline timings of one state, in the order
  run calls them (the train step donates, so later timers use its state)."""

  def __init__(self, args, config, split, state, augment_config):
    import jax

    from densenet_jax import data, steps

    self.args, self.config, self.split = args, config, split
    self.augment_config = augment_config
    self.n_dev = jax.local_device_count()
    self.p_train, self.p_eval = steps.make_steps(
      augment_config, frozen_stem=config.whiten_stem
    )
    self.state = steps.replicate(state)
    self.batch = next(
      data.train_batches(split, config.batch_size, config.seed, epoch=0)
    )
    # Batches already on the devices: the step alone, no host transfer.
    self.resident = jax.pmap(lambda x: x)(data.shard(self.batch, self.n_dev))
    eval_batch = next(data.eval_batches(split, config.eval_batch_size))
    self.eval_resident = jax.pmap(lambda x: x)(
      data.shard(eval_batch, self.n_dev)
    )
    self.train_exe = None

  def _rate(self, fn, images: int, steps: int) -> dict:
    return _median_rate(fn, images, steps, self.args.repeats)

  def train_steps(self, n, batches=None) -> None:
    import jax

    from densenet_jax import data

    for _ in range(n):
      if batches is None:
        b = self.resident
      else:
        b = data.shard(next(batches), self.n_dev)
      self.state, metrics = self.train_exe(self.state, b)
    jax.block_until_ready(metrics)

  def train(self, result: dict) -> dict:
    """Compiles the train step (time and memory into `result`), then times
    it on the resident batch."""
    start = time.perf_counter()
    self.train_exe = self.p_train.lower(self.state, self.resident).compile()
    result["train_compile_s"] = time.perf_counter() - start
    memory = self.train_exe.memory_analysis()
    if memory is not None:
      result["train_temp_mb"] = memory.temp_size_in_bytes / 2**20
    self.train_steps(self.args.warmup)
    return self._rate(self.train_steps, self.config.batch_size, self.args.steps)

  def eval(self, result: dict) -> dict:
    """Compiles the eval step (time into `result`), then times it."""
    import jax

    start = time.perf_counter()
    eval_exe = self.p_eval.lower(self.state, self.eval_resident).compile()
    result["eval_compile_s"] = time.perf_counter() - start

    def eval_steps(n):
      for _ in range(n):
        sums = eval_exe(self.state, self.eval_resident)
      jax.block_until_ready(sums)

    eval_steps(self.args.warmup)
    return self._rate(eval_steps, self.config.eval_batch_size, self.args.steps)

  def pipeline(self) -> dict:
    """The host batches alone, the augmentation alone, and the augmenting
    train step fed by the host pipeline, as in training."""
    import jax
    import jax.numpy as jnp

    from densenet_jax import augment, data, models

    config, steps, n_dev = self.config, self.args.steps, self.n_dev
    timed = {}

    # Host batches alone: shuffled gathers from the in-memory split.
    def host_batches(n):
      batches = data.train_batches(
        self.split, config.batch_size, 0, epoch=1, num_steps=10**9
      )
      for _ in range(n):
        data.shard(next(batches), n_dev)

    timed["host_batches"] = self._rate(
      host_batches, config.batch_size, 10 * steps
    )
    # Augmentation alone, jitted, on one device's share of the batch.
    images = jnp.asarray(self.batch["image"][: config.batch_size // n_dev])
    augment_fn = jax.jit(
      lambda key, x: augment.augment_batch(
        key, models.scale_inputs(x), self.augment_config
      )
    )
    jax.block_until_ready(augment_fn(jax.random.key(0), images))

    def augment_steps(n):
      for i in range(n):
        out = augment_fn(jax.random.key(i), images)
      jax.block_until_ready(out)

    timed["augment"] = self._rate(augment_steps, images.shape[0], 10 * steps)
    batches = data.train_batches(
      self.split, config.batch_size, config.seed, epoch=2, num_steps=10**9
    )
    self.train_steps(self.args.warmup, batches)
    timed["train_pipeline"] = self._rate(
      lambda n: self.train_steps(n, batches), config.batch_size, steps
    )
    return timed


def table(result: dict) -> str:
  """The results as a small readable table."""
  env = result["env"]
  rows = [
    (
      "model",
      f"{result['model']} ({result['params']:,} params, "
      f"impl {result['impl']}, {result['dtype']})",
    ),
    (
      "devices",
      f"{env['device_count']} x {env['device_kind']} "
      f"({env['backend']}), jax {env['jax']}",
    ),
    (
      "batch",
      f"{result['batch_size']} train, "
      f"{result['eval_batch_size']} eval (global)",
    ),
  ]
  labels = {
    "train": "train step (resident batch)",
    "train_pipeline": "train step fed by the host pipeline",
    "eval": "eval step",
    "host_batches": "host batches alone",
    "augment": "augmentation alone (jit, 1 device)",
  }
  for key, label in labels.items():
    if f"{key}_img_s" in result:
      runs = ", ".join(f"{r:.1f}" for r in result[f"{key}_runs_img_s"])
      rows.append((label, f"{result[f'{key}_img_s']:.1f} img/s  [{runs}]"))
  for key in ("train_compile_s", "eval_compile_s"):
    if key in result:
      rows.append((key.replace("_", " "), f"{result[key]:.1f} s"))
  rows.append(("peak host memory", f"{result['peak_host_mb']:.0f} MiB"))
  if result.get("train_temp_mb") is not None:
    rows.append(("train step temp", f"{result['train_temp_mb']:.0f} MiB"))
  if result.get("peak_device_mb") is not None:
    rows.append(("peak device memory", f"{result['peak_device_mb']:.0f} MiB"))
  rows.append(("load average", " ".join(map(str, env["load_avg"]))))
  rows.append(
    ("commit", f"{env['commit']}{' (dirty)' if env['dirty'] else ''}")
  )
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


COLUMNS = (  # (result key, heading) of markdown()
  ("train_img_s", "train img/s"),
  ("train_pipeline_img_s", "train + pipeline img/s"),
  ("eval_img_s", "eval img/s"),
  ("augment_img_s", "augment alone img/s"),
  ("host_batches_img_s", "host batches img/s"),
  ("train_compile_s", "train compile s"),
  ("peak_host_mb", "peak host MiB"),
  ("peak_device_mb", "peak device MiB"),
)


def markdown(results: list) -> str:
  """One row per result (of run or a --json file): what was measured and
  its numbers; a blank cell for what that mode does not measure."""
  head = ["model", "impl", "dtype", "devices", "batch", "mode"]
  lines = [
    "| " + " | ".join(head + [h for _, h in COLUMNS]) + " |",
    "|" + "---|" * len(head) + "---:|" * len(COLUMNS),
  ]
  for r in results:
    cells = [
      r["model"],
      r["impl"],
      r["dtype"],
      f"{r['env']['device_count']} x {r['env']['device_kind']}",
      str(r["batch_size"]),
      r["mode"] + (f" ({r['dataset']})" if r["mode"] == "pipeline" else ""),
    ]
    for key, _ in COLUMNS:
      value = r.get(key)
      cells.append("" if value is None else f"{value:,.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.summarize:
    results = [json.loads(pathlib.Path(p).read_text()) for p in args.summarize]
    print(markdown(results))
    return
  from densenet_jax import errors

  try:
    check_args(args)
  except errors.UserError as err:
    sys.exit(f"error: {err}")
  # Both must precede JAX's backend start-up, hence the late imports.
  if args.devices:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
      f"{flags} --xla_force_host_platform_device_count={args.devices}"
    ).strip()
  from densenet_jax import xla_flags

  if not args.no_xla_defaults:
    xla_flags.apply_defaults()
  import jax

  try:
    if args.devices and jax.local_device_count() != args.devices:
      raise errors.UserError(
        f"--devices {args.devices}: this {jax.default_backend()} run has "
        f"{jax.local_device_count()} local devices (only CPU devices can be "
        "faked)"
      )
    result = run(args)
  except errors.UserError as err:
    sys.exit(f"error: {err}")
  print(table(result), flush=True)
  if args.json == "-":
    print(json.dumps(result))
  elif args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
