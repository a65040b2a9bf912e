"""What this machine's CPU can do at most for a network: the float32 matrix
product rate XLA reaches here, the network's FLOPs per trained and per
evaluated image (XLA's cost analysis of the compiled functions), and the
images/s those allow.

    python experiments/cpu_peak.py --model reference --output PATH.json

A bound to read throughput against: no implementation of the same math
trains faster than peak / (FLOPs per trained image), whatever its layers.
"""

import argparse
import json
import pathlib
import time

from densenet_jax import benchmark, xla_flags


def matmul_gflops(n: int, repeats: int) -> float:
  """The best of `repeats` timed n x n float32 matrix products, in GFLOP/s."""
  import jax
  import jax.numpy as jnp

  a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


def flops_per_image(model_name: str, batch: int) -> dict:
  """XLA's FLOP count of one training gradient and one evaluation of a
  batch, per image."""
  import jax
  import jax.numpy as jnp
  import optax

  from densenet_jax import models

  model = models.create_model(model_name)
  x = jnp.zeros((batch, 32, 32, 3))
  labels = jnp.zeros((batch,), jnp.int32)
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / batch

  return {
    "train": flops(jax.grad(loss), variables["params"]),
    "eval": flops(lambda v: model.apply(v, x), variables),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="reference")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--matmul-size", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--output", help="also write the numbers as JSON")
  args = parser.parse_args(argv)
  xla_flags.apply_defaults()
  peak = matmul_gflops(args.matmul_size, args.repeats)
  flops = flops_per_image(args.model, args.batch_size)
  result = {
    "cpu": benchmark.cpu_model(),
    "model": args.model,
    "matmul_gflop_s": peak,
    "train_gflop_per_image": flops["train"] / 1e9,
    "eval_gflop_per_image": flops["eval"] / 1e9,
    "train_img_s_at_peak": peak * 1e9 / flops["train"],
    "eval_img_s_at_peak": peak * 1e9 / flops["eval"],
  }
  for key, value in result.items():
    print(f"{key:24} {value:.4g}" if isinstance(value, float) else value)
  if args.output:
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
