"""The fast layers compute what the straightforward flax ones do."""

import functools

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from densenet_jax import layers, models


def assert_trees_close(a, b, rtol=1e-4):
  """Leaf-wise |a - b| <= rtol * (the largest |a| over the whole tree)."""
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize(
  "kernel_size,use_bias", [((1, 1), False), ((3, 3), True)]
)
def test_conv_matches_flax_conv(kernel_size, use_bias):
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 5))
  fast = layers.Conv(7, kernel_size, use_bias=use_bias)
  ref = nn.Conv(7, kernel_size, use_bias=use_bias)
  variables = ref.init(jax.random.key(1), x)
  assert_trees_close(variables, fast.init(jax.random.key(1), x), rtol=0)

  def loss(module, variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  assert_trees_close(
    jax.grad(functools.partial(loss, ref), (0, 1))(variables, x),
    jax.grad(functools.partial(loss, fast), (0, 1))(variables, x),
  )


def _batch_norm_case(module_cls, relu, train, x, axis_name=None):
  """Output, updated statistics and gradients of one BatchNorm layer."""
  module = module_cls(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-3,
    relu=relu,
    axis_name=axis_name,
  )
  variables = module.init(jax.random.key(0), x)
  # Non-trivial parameters and running statistics.
  variables = jax.tree.map(
    lambda v: v + 0.3 * jax.random.normal(jax.random.key(2), v.shape),
    variables,
  )
  weights = jax.random.normal(jax.random.key(3), x.shape)

  def loss(params, x):
    y, updates = module.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      mutable=["batch_stats"],
    )
    return jnp.sum(jnp.sin(y * weights)), (y, updates)

  grads, (y, updates) = jax.grad(loss, (0, 1), has_aux=True)(
    variables["params"], x
  )
  return y, updates, grads


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_matches_flax(relu, train):
  x = 2.0 + jax.random.normal(jax.random.key(1), (6, 4, 4, 5))
  case = jax.jit(_batch_norm_case, static_argnums=(0, 1, 2))
  want = case(layers.FlaxBatchNorm, relu, train, x)
  got = case(layers.BatchNorm, relu, train, x)
  assert_trees_close(want, got)


def test_batch_norm_over_a_named_axis_matches_flax():
  """Statistics and input gradients over 2 'devices' (a vmapped axis)."""
  x = 2.0 + jax.random.normal(jax.random.key(1), (2, 6, 4, 4, 5))

  def case(module_cls):
    fn = functools.partial(
      _batch_norm_case, module_cls, True, True, axis_name="devices"
    )
    return jax.jit(jax.vmap(fn, axis_name="devices"))(x)

  assert_trees_close(case(layers.FlaxBatchNorm), case(layers.BatchNorm))


@pytest.mark.parametrize(
  "fast,ref",
  [
    (layers.avg_pool_2x2, layers.flax_avg_pool_2x2),
    (layers.max_pool_2x2, layers.flax_max_pool_2x2),
  ],
)
def test_pools_match_flax(fast, ref):
  """Values and gradients, on a map whose height and width differ."""
  x = jax.random.normal(jax.random.key(0), (3, 8, 6, 5))
  cotangent = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
  want, want_vjp = jax.vjp(ref, x)
  got, got_vjp = jax.vjp(fast, x)
  assert_trees_close(want, got, rtol=1e-6)
  assert_trees_close(want_vjp(cotangent), got_vjp(cotangent), rtol=1e-6)


# Two layers per block exercise the concatenation; a BC-like stem none.
SMALL = dict(blocks=(2, 2), growth_rate=6, stem_features=8)
BC_LIKE = dict(
  blocks=(2, 1),
  growth_rate=4,
  bottleneck_width=4,
  stem_features=12,
  transition_after_last=False,
  stem_bn=False,
  stem_relu=False,
  stem_bias=False,
)


MAX_POOL = dict(SMALL, transition_pool="max")


@pytest.mark.parametrize("overrides", [SMALL, BC_LIKE, MAX_POOL])
def test_fast_model_matches_flax_model(overrides):
  """Same variables; same logits, gradients and batch statistics in training
  mode, same logits in eval mode."""
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  labels = jnp.arange(4)
  pair = [
    models.create_model("tiny", impl=impl, **overrides)
    for impl in ("flax", "fast")
  ]
  # One compilation per step for both models keeps the test quick.
  inits = jax.jit(lambda key: [m.init(key, x) for m in pair])(jax.random.key(0))
  assert_trees_close(*inits, rtol=0)
  variables = inits[0]

  def train_outputs(model):
    def loss(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return ce.mean(), (logits, updates)

    return jax.grad(loss, has_aux=True)(variables["params"])

  assert_trees_close(*jax.jit(lambda: [train_outputs(m) for m in pair])())
  eval_logits = jax.jit(lambda: [m.apply(variables, x) for m in pair])()
  assert_trees_close(*eval_logits)


def test_fast_train_step_needs_less_temporary_memory_than_flax():
  """XLA's memory analysis of a training gradient: the fast layers keep no
  float32 copy of the feature maps from the forward pass to the backward
  one. A centred copy (x - mean) shared between the passes brought the
  fast set here from 79% of the flax set's temporaries to 98% (and the
  reference network's train step from 1216 to 2062 MiB)."""
  x = jnp.zeros((16, 32, 32, 3))

  def temp_bytes(impl):
    model = models.create_model("tiny", impl=impl)
    variables = model.init(jax.random.key(0), x)

    def loss(params):
      logits, _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      return jnp.sum(logits)

    compiled = jax.jit(jax.grad(loss)).lower(variables["params"]).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes("fast") < 0.9 * temp_bytes("flax")


def test_fast_model_in_bfloat16_stays_close_to_float32():
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  model = models.create_model("tiny")
  variables = jax.jit(model.init)(jax.random.key(0), x)

  def logits(model):
    apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    return jax.jit(apply)(variables, x)[0]

  logits32 = logits(model)
  logits16 = logits(models.create_model("tiny", dtype=jnp.bfloat16))
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.1)


def test_bfloat16_keeps_the_stem_statistics_of_a_large_stem_bias():
  """A stem conv bias of 20 (as a bfloat16 run reached) leaves a spread of
  about 0.1 in the stem's outputs: bfloat16 would round it away, and the
  stem BatchNorm's statistics with it; the stem computes in float32."""
  x = 0.5 + 0.1 * jax.random.uniform(jax.random.key(1), (8, 8, 8, 3))
  stats = []
  for dtype in (jnp.float32, jnp.bfloat16):
    model = models.create_model("tiny", dtype=dtype)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    params = flax.core.unfreeze(variables["params"])
    params["stem_conv"]["bias"] = jnp.full_like(params["stem_conv"]["bias"], 20)
    _, updates = jax.jit(
      functools.partial(model.apply, train=True, mutable=["batch_stats"])
    )({"params": params, "batch_stats": variables["batch_stats"]}, x)
    stats.append(updates["batch_stats"]["stem_bn"])
  np.testing.assert_allclose(stats[1]["mean"], stats[0]["mean"], rtol=1e-4)
  np.testing.assert_allclose(stats[1]["var"], stats[0]["var"], rtol=1e-3)


def test_gradients_match_float64_on_the_reference_shapes():
  """Each layer set's float32 gradients against float64 (tests/gradcheck.py
  in a process of its own: float64 is switched on for a whole process)."""
  import json
  import pathlib
  import subprocess
  import sys

  script = pathlib.Path(__file__).with_name("gradcheck.py")
  out = subprocess.run(
    [sys.executable, str(script), "32", "128"],
    capture_output=True,
    text=True,
    check=True,
    timeout=1800,  # ~1 minute alone on 2 cores; generous for a busy machine
  ).stdout
  errors = json.loads(out.splitlines()[-1])
  assert len(errors) == 8  # 4 cases, 2 batch sizes
  for case, by_impl in errors.items():
    for impl, error in by_impl.items():
      assert error < 1e-4, (case, impl, error)
