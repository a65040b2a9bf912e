import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from densenet_jax import errors, layers, models


def param_count(model):
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.ones((2, 32, 32, 3)))
  )
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_reference_has_the_tutorials_parameter_count():
  assert param_count(models.create_model("reference")) == 1_359_842


def test_densenet_bc_100_k12_parameter_count():
  assert param_count(models.create_model("densenet_bc_100_k12")) == 769_162


@pytest.mark.parametrize(
  "preset, count",
  [
    ("cpu_small", 234_242),
    ("cpu_medium", 420_458),
    ("cpu_wide_stem", 459_658),
    ("cpu_deep_tail", 742_154),
    ("cpu_full_res", 467_978),
    ("cpu_growth64", 1_592_554),
    ("cpu_medium_max", 420_458),
    ("cpu_air", 1_029_546),
  ],
)
def test_cpu_presets_parameter_counts(preset, count):
  assert param_count(models.create_model(preset)) == count


def test_reference_shapes_and_channel_counts():
  model = models.create_model("reference")
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  params = variables["params"]
  # Blocks add 4, 8 and 16 layers of 32 channels; every transition halves.
  expected = {
    "transition0": (144, 72),
    "transition1": (328, 164),
    "transition2": (676, 338),
  }
  for name, (cin, cout) in expected.items():
    assert params[name]["conv"]["kernel"].shape == (1, 1, cin, cout)
  layer = params["block2"]["layer15"]
  assert layer["conv1"]["kernel"].shape == (1, 1, 164 + 15 * 32, 64)
  assert layer["conv2"]["kernel"].shape == (3, 3, 64, 32)
  assert params["classifier"]["kernel"].shape == (338, 10)
  # Only the stem convolution has a bias.
  biased = [
    path
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    if "conv" in jax.tree_util.keystr(path) and path[-1].key == "bias"
  ]
  assert [jax.tree_util.keystr(p) for p in biased] == ["['stem_conv']['bias']"]
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2, 10)


@pytest.mark.parametrize("impl", ["fast", "flax"])
def test_batchnorm_epsilons_and_momentum_follow_keras(impl):
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (nn.BatchNorm, layers.BatchNorm)):
      module = context.module
      seen["/".join(module.scope.path)] = (module.epsilon, module.momentum)
    return next_fun(*args, **kwargs)

  model = models.create_model("reference", impl=impl)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  assert seen.pop("stem_bn") == (1e-3, 0.99)  # Keras' default BatchNorm
  # 2 per dense layer (28), 1 per transition (3), the final one.
  assert len(seen) == 2 * 28 + 3 + 1
  assert set(seen.values()) == {(1.001e-5, 0.99)}


def test_eval_mode_leaves_batch_stats_unchanged_train_mode_updates():
  model = models.create_model("tiny")
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  _, eval_updates = apply(variables, x, train=False, mutable=("batch_stats",))
  same = jax.tree.map(
    np.array_equal, eval_updates["batch_stats"], variables["batch_stats"]
  )
  assert all(jax.tree.leaves(same))
  _, train_updates = apply(variables, x, train=True, mutable=("batch_stats",))
  changed = jax.tree.map(
    lambda a, b: not np.array_equal(a, b),
    train_updates["batch_stats"],
    variables["batch_stats"],
  )
  assert all(jax.tree.leaves(changed))


def test_bfloat16_computes_in_bfloat16_keeps_float32_params():
  model = models.create_model("tiny", dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {
    jnp.dtype(jnp.float32)
  }
  assert jax.eval_shape(model.apply, variables, x).dtype == jnp.float32


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(errors.UserError, match="unknown model preset 'resnet'"):
    models.create_model("resnet")


def test_unknown_pooling_is_a_clear_error():
  model = models.create_model("tiny", transition_pool="median")
  with pytest.raises(errors.UserError, match="unknown transition_pool 'me"):
    model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))


def test_growth_rate_per_block():
  model = models.create_model("tiny", growth_rate=(4, 6))
  x = jnp.ones((1, 8, 8, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  assert params["block0"]["layer0"]["conv2"]["kernel"].shape[-1] == 4
  assert params["block1"]["layer0"]["conv2"]["kernel"].shape[-1] == 6
  model = models.create_model("tiny", growth_rate=(4, 6, 8))
  with pytest.raises(errors.UserError, match=r"\(4, 6, 8\) has 3 entries"):
    model.init(jax.random.key(0), x)


def test_max_pooling_takes_the_maximum_of_the_transition_conv():
  """The transition max-pools its 1x1 convolution's output (not its input,
  which would be cheaper but another function)."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
  norm = functools.partial(
    layers.BatchNorm, use_running_average=True, epsilon=0.0
  )
  transition = models.Transition(
    0.5, norm, layers.Conv, layers.IMPLS["fast"], pool="max"
  )
  variables = transition.init(jax.random.key(1), x)
  kernel = variables["params"]["conv"]["kernel"][0, 0]  # fresh BN: identity
  conv = jnp.einsum("bhwc,co->bhwo", jax.nn.relu(x), kernel)
  expected = conv.reshape(2, 4, 2, 4, 2, 3).max(axis=(2, 4))
  np.testing.assert_allclose(
    transition.apply(variables, x), expected, rtol=1e-5, atol=1e-6
  )


def test_summary_lists_blocks_and_total():
  table = models.summary(models.create_model("tiny"))
  for name in ("stem_conv", "block0", "transition0", "classifier", "962"):
    assert name in table


@pytest.mark.parametrize("impl", ["fast", "flax"])
def test_reference_initialises_as_keras_does(impl):
  """glorot_uniform kernels: U(-l, l), l = sqrt(6 / (fan_in + fan_out)),
  fans counting the receptive field, as Keras' Conv2D and Dense; zero
  biases; BatchNorm scale 1, offset 0, moving mean 0, variance 1."""
  # The reference preset with two short blocks: its initialisers, every
  # kind of layer, a fraction of the compilation.
  model = models.create_model("reference", blocks=(2, 2), impl=impl)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  kernels = 0
  for path, value in jax.tree_util.tree_leaves_with_path(variables):
    name = jax.tree_util.keystr(path)
    value = np.asarray(value)
    if name.endswith("['kernel']"):
      receptive = int(np.prod(value.shape[:-2]))
      fan_in, fan_out = value.shape[-2] * receptive, value.shape[-1] * receptive
      limit = np.sqrt(6 / (fan_in + fan_out))
      assert np.abs(value).max() <= limit, name
      if value.size >= 1000:  # enough draws to see the spread
        np.testing.assert_allclose(value.std(), limit / np.sqrt(3), rtol=0.1)
      kernels += 1
    elif name.endswith("['scale']") or name.endswith("['var']"):
      assert (value == 1).all(), name
    else:  # biases, BatchNorm offsets and moving means
      assert (value == 0).all(), name
  assert kernels == 1 + 2 * 4 + 2 + 1  # stem, dense layers, transitions, head
  # The other presets keep flax's default, lecun_normal.
  tiny = models.create_model("tiny", impl=impl)
  kernel = tiny.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))["params"]
  kernel = np.asarray(kernel["classifier"]["kernel"])
  assert np.abs(kernel).max() > np.sqrt(6 / sum(kernel.shape))
