"""A network's 3x3 convolutions by algorithm on this machine: XLA's direct
convolution against Winograd's minimal filtering F(2x2,3x3) and F(4x4,3x3)
written in jax.numpy, at the shapes the network evaluates (chunks of
models.EVAL_CHUNK_CPU images, one after the other, as models.eval_logits
runs them on a CPU) and trains (the whole batch, forward and both
gradients).

    python experiments/conv_algorithms.py --model reference --output PATH.json

F(m x m, 3x3) computes each m x m output tile from an (m+2) x (m+2) input
tile with (m+2)^2 multiplications per channel pair instead of 9 m^2: 1/2.25
of the direct multiply-adds for F(2x2), 1/4 for F(4x4), at the cost of
transforming the input tiles and the output tiles (slices and additions
here) and of an (m+2)^2 / m^2 larger transformed input. Autodiff of the
Winograd form gives Winograd-form gradients. Reports, per layer shape and
algorithm, the time, the rate in direct-equivalent GFLOP/s (the direct
convolution's FLOPs over the time) and the largest error relative to the
direct result; then the time of all the network's 3x3 convolutions for one
batch, eval and train.
"""

import argparse
import functools
import json
import operator
import pathlib
import statistics
import time

import numpy as np

from densenet_jax import benchmark, xla_flags

# Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks":
# B^T (input tiles), G (kernels), A^T (output tiles) of F(m, 3).
WINOGRAD = {
  2: (
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    [[1, 1, 1, 0], [0, 1, -1, -1]],
  ),
  4: (
    [
      [4, 0, -5, 0, 1, 0],
      [0, -4, -4, 1, 1, 0],
      [0, 4, -4, -1, 1, 0],
      [0, -2, -1, 2, 1, 0],
      [0, 2, -1, -2, 1, 0],
      [0, 4, 0, -5, 0, 1],
    ],
    [
      [1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1],
    ],
    [
      [1, 1, 1, 1, 1, 0],
      [0, 1, -1, 2, -2, 0],
      [0, 1, 1, 4, 4, 0],
      [0, 1, -1, 8, -8, 1],
    ],
  ),
}
ALGORITHMS = ("direct", "winograd2", "winograd4")


def _tile_views(a, axis: int, m: int) -> list:
  """The m + 2 strided views of `a` along `axis` whose i-th holds element i
  of every input tile (tiles of m + 2 elements, m apart)."""
  from jax import lax

  count = (a.shape[axis] - 2) // m
  return [
    lax.slice_in_dim(a, i, i + m * (count - 1) + 1, m, axis)
    for i in range(m + 2)
  ]


def _combine(matrix, parts: list) -> list:
  """[sum_j matrix[i][j] * parts[j] for each row i], zeros skipped."""

  def row_sum(row):
    terms = [
      p if c == 1 else -p if c == -1 else p * c for c, p in zip(row, parts) if c
    ]
    return functools.reduce(operator.add, terms)

  return [row_sum(row) for row in matrix]


def winograd_conv(x, kernel, m: int):
  """lax.conv_general_dilated(x, kernel) (NHWC, HWIO 3x3, stride 1, 'SAME')
  through Winograd's F(m x m, 3x3); height and width multiples of m."""
  import jax.numpy as jnp

  bt, g, at = WINOGRAD[m]
  n, h, w, c = x.shape
  if h % m or w % m:
    raise ValueError(f"F({m}x{m},3x3) needs sizes divisible by {m}: {h}x{w}")
  a = m + 2
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = _combine(bt, _tile_views(padded, 1, m))
  tiles = [t for r in rows for t in _combine(bt, _tile_views(r, 2, m))]
  v = jnp.stack(tiles).reshape(a * a, -1, c)  # (position, tile, channel)
  g = np.asarray(g, np.float32)
  u = jnp.einsum("ik,jl,klco->ijco", g, g, kernel).reshape(a * a, c, -1)
  products = jnp.einsum("tpc,tco->tpo", v, u)
  products = products.reshape(a, a, n, h // m, w // m, -1)
  out_rows = _combine(at, list(products))  # each (a, n, h/m, w/m, out)
  y = jnp.stack(
    [jnp.stack(_combine(at, list(r)), axis=3) for r in out_rows], axis=2
  )
  return y.reshape(n, h, w, -1)


def convolution(algorithm: str):
  from densenet_jax import layers

  if algorithm == "direct":
    return layers.conv_same
  return functools.partial(winograd_conv, m=int(algorithm[-1]))


def conv3x3_shapes(model, image_size: int = 32) -> list:
  """(count, size, in, out) of the 3x3 convolutions of `model`'s dense
  layers (with a bottleneck), block by block; the first block sees
  `image_size`, and each transition halves it."""
  if not model.bottleneck_width:
    raise ValueError("the dense layers need a bottleneck (fixed 3x3 input)")
  return [
    (layers, image_size >> i, model.bottleneck_width * k, k)
    for i, (layers, k) in enumerate(zip(model.blocks, model.growth_rates()))
  ]


def _seconds(fn, args, repeats: int) -> float:
  """Median of `repeats` timed calls after one untimed."""
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _relative_error(y, reference) -> float:
  import jax
  import jax.numpy as jnp

  errors = [
    jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))
    for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(reference))
  ]
  return float(max(errors))


def _functions(algorithm: str, chunk: int) -> dict:
  """The eval (chunks of `chunk` images, one after the other) and train
  (forward and both gradients of the whole batch) functions, jitted."""
  import jax

  conv = convolution(algorithm)

  def evaluate(x, kernel):
    chunks = x.reshape((-1, chunk) + x.shape[1:])
    y = jax.lax.map(lambda c: conv(c, kernel), chunks)
    return y.reshape(x.shape[:-1] + y.shape[-1:])

  def train(x, kernel, cotangent):
    y, vjp = jax.vjp(conv, x, kernel)
    return y, vjp(cotangent)

  return {"eval": jax.jit(evaluate), "train": jax.jit(train)}


def measure(shapes, batch: int, chunk: int, repeats: int) -> list:
  """One row per layer shape, mode and algorithm."""
  import jax

  rows = []
  fns = {a: _functions(a, chunk) for a in ALGORITHMS}
  for _, size, cin, cout in shapes:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, size, size, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) / np.sqrt(9 * cin)
    cotangent = jax.random.normal(keys[2], (batch, size, size, cout))
    flops = 2 * batch * size * size * 9 * cin * cout
    for mode, args, passes in (
      ("eval", (x, kernel), 1),
      ("train", (x, kernel, cotangent), 3),
    ):
      reference = fns["direct"][mode](*args)
      for algorithm in ALGORITHMS:
        fn = fns[algorithm][mode]
        seconds = _seconds(fn, args, repeats)
        rows.append(
          {
            "size": size,
            "in": cin,
            "out": cout,
            "mode": mode,
            "algorithm": algorithm,
            "ms": seconds * 1e3,
            "gflop_s": passes * flops / seconds / 1e9,
            "relative_error": _relative_error(fn(*args), reference),
          }
        )
  return rows


def network_ms(shapes, rows) -> dict:
  """The time of all 3x3 convolutions of one batch, per mode and algorithm."""
  count = {size: n for n, size, _, _ in shapes}
  total = {}
  for row in rows:
    key = f"{row['mode']}/{row['algorithm']}"
    total[key] = total.get(key, 0.0) + count[row["size"]] * row["ms"]
  return total


def markdown(result: dict) -> str:
  lines = [
    f"{result['model']}'s 3x3 convolutions, batch {result['batch']}, eval in"
    f" chunks of {result['eval_chunk']}; {result['cpu']}",
    "",
    "| size | in -> out | mode | algorithm | ms | GFLOP/s (direct-equiv.) "
    "| rel. error |",
    "|---|---|---|---|---:|---:|---:|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['size']}x{r['size']} | {r['in']} -> {r['out']} | {r['mode']} "
      f"| {r['algorithm']} | {r['ms']:.2f} | {r['gflop_s']:.0f} "
      f"| {r['relative_error']:.1e} |"
    )
  lines += ["", "| all 3x3 convolutions of one batch | ms | / direct |"]
  lines.append("|---|---:|---:|")
  for key, ms in result["network_ms"].items():
    direct = result["network_ms"][key.split("/")[0] + "/direct"]
    lines.append(f"| {key} | {ms:.1f} | {ms / direct:.2f}x |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="reference")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--eval-chunk", type=int, help="default: the CPU's")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--output", help="also write the numbers as JSON")
  args = parser.parse_args(argv)
  xla_flags.apply_defaults()
  from densenet_jax import models

  chunk = args.eval_chunk or models.EVAL_CHUNK_CPU
  if args.batch_size % chunk:
    parser.error(f"--batch-size {args.batch_size} is no multiple of {chunk}")
  shapes = conv3x3_shapes(models.create_model(args.model))
  rows = measure(shapes, args.batch_size, chunk, args.repeats)
  result = {
    "cpu": benchmark.cpu_model(),
    "model": args.model,
    "batch": args.batch_size,
    "eval_chunk": chunk,
    "rows": rows,
    "network_ms": network_ms(shapes, rows),
  }
  print(markdown(result))
  if args.output:
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
