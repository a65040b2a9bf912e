"""The layers' gradients in float32 against the same functions in float64,
on the reference network's shapes: prints one JSON line of relative errors.

Run as a script (float64 is switched on for its whole process):

    python tests/gradcheck.py 32 128     # batch sizes

Each case is one BatchNorm(+ReLU) in training mode, with the input it has
in the reference network at that batch size: a list of feature maps (the
stem's 16 channels and the dense layers' 32 each, the transitions'
outputs), whose channel means are large against their spread
(up to 8x), as after a ReLU and a convolution, where a gradient formula that
subtracts large sums cancels. The error of a result is max|got - exact| /
max|exact|, per output (input gradient, scale, bias); the float64 values
come from plain autodiff of flax's BatchNorm.
"""

import functools
import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from densenet_jax import layers, models  # noqa: E402

# (name, height = width, channels of each feature map in the list, the
# largest ratio of a channel's mean to its spread)
BATCH_NORM_CASES = (
  ("block0/layer3/bn1", 32, [16, 32, 32, 32], 8.0),
  ("block2/layer15/bn1", 8, [164] + [32] * 15, 8.0),
  ("final_bn", 2, [338], 8.0),
  # A channel far from zero against its spread: sum(g * x) - mean * sum(g)
  # loses most of its digits there.
  ("block2/layer15/bn2", 8, [64], 300.0),
)


def representable(x):
  """x rounded to float32, in float64: inputs both precisions hold exactly."""
  return x.astype(jnp.float32).astype(jnp.float64)


def feature_maps(key, batch, size, channels, max_mean=8.0):
  """Maps whose channels have means of 0 to max_mean times their spread."""
  maps = []
  for i, c in enumerate(channels):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    mean = jax.random.uniform(k1, (c,), jnp.float64, 0.0, max_mean)
    noise = jax.random.normal(k2, (batch, size, size, c), jnp.float64)
    maps.append(representable(mean + noise))
  return maps


def relative_errors(got, exact):
  return [
    float(jnp.max(jnp.abs(g.astype(jnp.float64) - e)) / jnp.max(jnp.abs(e)))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(exact))
  ]


def batch_norm_params(features):
  """Scale and bias away from 1 and 0, the same values in both precisions."""
  key = jax.random.key(1)
  scale = 1 + 0.3 * jax.random.normal(key, (features,), jnp.float64)
  bias = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (features,))
  return {"scale": representable(scale), "bias": representable(bias)}


def batch_norm(module, xs, params):
  """Training-mode output of `module` (running statistics discarded)."""
  features = params["scale"].shape[0]
  stats = {"mean": jnp.zeros(features), "var": jnp.ones(features)}
  variables = {"params": params, "batch_stats": stats}
  return module.apply(variables, xs, mutable=["batch_stats"])[0]


def batch_norm_case(batch, size, channels, max_mean):
  key = jax.random.key(batch * 1000 + size)
  exact_xs = feature_maps(key, batch, size, channels, max_mean)
  exact_params = batch_norm_params(sum(channels))
  kwargs = dict(
    use_running_average=False, epsilon=models.KERAS_BN_EPSILON, relu=True
  )
  exact_bn = layers.FlaxBatchNorm(dtype=jnp.float64, **kwargs)
  # The ReLU's kink: an output within float32 rounding of 0 may fall on
  # either side of it in float32 and float64, a different function. The
  # cotangent is 0 on those outputs, so that both compute the same one.
  y = jax.jit(functools.partial(batch_norm, exact_bn))(exact_xs, exact_params)
  cotangent = jax.random.normal(jax.random.fold_in(key, 7), y.shape, y.dtype)
  cotangent = representable(jnp.where(jnp.abs(y) > 1e-3, cotangent, 0.0))

  def grads(module, xs, params):
    def f(xs, params):
      y = batch_norm(module, xs, params)
      return jnp.sum(y * cotangent.astype(y.dtype))

    return jax.jit(jax.grad(f, (0, 1)))(xs, params)

  exact = grads(exact_bn, exact_xs, exact_params)
  xs, params = jax.tree.map(
    lambda v: v.astype(jnp.float32), (exact_xs, exact_params)
  )
  return {
    impl: max(
      relative_errors(
        grads(layers.IMPLS[impl].batch_norm(**kwargs), xs, params), exact
      )
    )
    for impl in ("fast", "flax")
  }


def main(batches) -> dict:
  result = {}
  for batch in batches:
    for name, size, channels, max_mean in BATCH_NORM_CASES:
      result[f"{name} batch {batch}"] = batch_norm_case(
        batch, size, channels, max_mean
      )
  return result


if __name__ == "__main__":
  print(json.dumps(main([int(b) for b in sys.argv[1:]])))
