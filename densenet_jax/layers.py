"""Convolution and BatchNorm(+ReLU) layers: a fast and a straightforward set.

Both sets create exactly flax's variables (nn.Conv: kernel (kh, kw, in, out)
and bias; nn.BatchNorm: scale, bias, batch_stats mean and var), so a model
built from either reads the other's checkpoints, and both compute the same
function up to float rounding (tests/test_layers.py). The fast set differs
only in how XLA is asked to compute it (measurements: experiments/README.md):

- Conv: a 1x1 kernel runs as a 2-D matrix product (whose gradients are
  2-D products too), not as a convolution; a larger kernel is XLA's
  convolution.
- BatchNorm: training-mode statistics, normalisation and an optional ReLU as
  one function with a hand-written gradient (`batch_norm_train`): two passes
  over the input forward and two backward, where autodiff of nn.BatchNorm and
  nn.relu makes several more and stores more intermediates.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_same(x, kernel):
  """lax.conv_general_dilated(x, kernel), stride 1, 'SAME', NHWC/HWIO."""
  return lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC
  )


class Conv(nn.Module):
  """nn.Conv(features, kernel_size) (stride 1, 'SAME'), same variables."""

  features: int
  kernel_size: tuple
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel",
      self.kernel_init,
      tuple(self.kernel_size) + (x.shape[-1], self.features),
    )
    bias = (
      self.param("bias", nn.initializers.zeros, (self.features,))
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if tuple(self.kernel_size) == (1, 1):
      y = x.reshape(-1, x.shape[-1]) @ kernel[0, 0]
      y = y.reshape(x.shape[:-1] + (self.features,))
    else:
      y = conv_same(x, kernel)
    return y if bias is None else y + bias


def _channel_sums(x):
  return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def _over_devices(x, axis_name):
  """The sum of x over the devices of `axis_name` (None: this one alone)."""
  return x if axis_name is None else lax.psum(x, axis_name)


def _count(x, axis_name):
  return x.size // x.shape[-1] * _over_devices(1, axis_name)


def _map_stats(x, axis_name):
  """Channel means and variances of one feature map, in float32, over all
  axes but the last and over the devices of `axis_name`. The variance is
  the mean of (x - mean)^2, a second pass over x: E[x^2] - E[x]^2 in
  float32 cancels for a channel whose mean is large against its spread.
  Computed map by map, they are the same expressions in every layer that
  reads the map, so XLA computes them once per map, not once per layer."""
  n = _count(x, axis_name)
  x = x.astype(jnp.float32)
  mean = _over_devices(_channel_sums(x), axis_name) / n
  var = _over_devices(_channel_sums(jnp.square(x - mean)), axis_name) / n
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(xs, scale, bias, epsilon, relu, axis_name):
  """Training-mode BatchNorm of the channel-wise concatenation of the feature
  maps `xs` over all axes but the last, then ReLU if `relu`.

  Returns (y, mean, var), y the normalised concatenation, never
  materialising the concatenation itself; mean and var (float32, over the
  devices of `axis_name` too) feed the running averages and are not
  differentiated (`_map_stats`).
  """
  return _bn_forward(xs, scale, bias, epsilon, relu, axis_name)[0]


def _chunks(xs):
  """The slices of the concatenation's channels that each map in xs holds."""
  offsets = np.cumsum([0] + [x.shape[-1] for x in xs])
  return [slice(lo, hi) for lo, hi in zip(offsets[:-1], offsets[1:])]


# The statistics and the gradient's sums are of centred values: in float32,
# E[x^2] - E[x]^2 and sum(g * x) - mean * sum(g) cancel where a channel's
# mean is large against its spread (tests/gradcheck.py). But no expression
# (x - mean) of a map is shared between the forward and backward passes:
# XLA would compute it once and keep a float32 copy of every feature map
# alive from the forward pass to the backward one (train step temporaries
# 1216 -> 2062 MiB, 13% of the reference network's training throughput).
# The variance's (x - mean), shared by the layers that read the map, feeds
# its reduction only; the backward pass centres through products with the
# layer's own scale, a * x - a * mean.
def _bn_forward(xs, scale, bias, epsilon, relu, axis_name):
  stats = [_map_stats(x, axis_name) for x in xs]
  xs32 = [x.astype(jnp.float32) for x in xs]
  mean = jnp.concatenate([m for m, _ in stats])
  var = jnp.concatenate([v for _, v in stats])
  rstd = lax.rsqrt(var + epsilon)
  a = scale * rstd
  y = jnp.concatenate(xs32, axis=-1) * a + (bias - mean * a)
  if relu:
    y = jnp.maximum(y, 0.0)
  return (y.astype(xs[0].dtype), mean, var), (xs, a, bias, mean, rstd)


def _bn_bwd(epsilon, relu, axis_name, res, cotangents):
  # The statistics' cotangents are ignored: callers stop their gradient.
  xs, a, bias, mean, rstd = res
  g = cotangents[0].astype(jnp.float32)
  chunks = _chunks(xs)
  # Per feature map: a * (x - mean), and its slice of the output gradient,
  # ReLU-masked.
  us, gs = [], []
  for x, c in zip(xs, chunks):
    u = x.astype(jnp.float32) * a[c] - mean[c] * a[c]
    gc = g[..., c]
    if relu:
      gc = jnp.where(u + bias[c] > 0, gc, 0.0)
    us.append(u)
    gs.append(gc)
  # Parameter gradients stay per device (the train step averages them);
  # the input gradient needs the sums over all devices' examples. dscale is
  # the sum of g * (x - mean) * rstd.
  dbias = jnp.concatenate([_channel_sums(gc) for gc in gs])
  dscale = jnp.concatenate(
    [
      _channel_sums(gc * (x.astype(jnp.float32) * rstd[c] - mean[c] * rstd[c]))
      for x, gc, c in zip(xs, gs, chunks)
    ]
  )
  sum_g, sum_gxhat = _over_devices((dbias, dscale), axis_name)
  n = _count(xs[0], axis_name)
  k1 = -rstd * sum_gxhat / n  # of u = a * (x - mean)
  k0 = -a * sum_g / n
  dxs = tuple(
    (gc * a[c] + u * k1[c] + k0[c]).astype(x.dtype)
    for x, u, gc, c in zip(xs, us, gs, chunks)
  )
  return dxs, dscale, dbias


batch_norm_train.defvjp(_bn_forward, _bn_bwd)


def _as_list(x):
  return list(x) if isinstance(x, (list, tuple)) else [x]


class BatchNorm(nn.Module):
  """nn.BatchNorm over the last axis (same variables and math), then a ReLU
  when `relu`. Takes a feature map or a list of them to concatenate along
  channels; training mode runs batch_norm_train."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  axis_name: str | None = None
  relu: bool = False

  @nn.compact
  def __call__(self, x):
    xs = _as_list(x)
    features = (sum(x.shape[-1] for x in xs),)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features)
    scale = self.param("scale", nn.initializers.ones, features)
    bias = self.param("bias", nn.initializers.zeros, features)
    dtype = self.dtype or jnp.result_type(xs[0], scale)
    xs = tuple(x.astype(dtype) for x in xs)
    if self.use_running_average:
      a = scale * lax.rsqrt(ra_var.value + self.epsilon)
      x = jnp.concatenate([x.astype(jnp.float32) for x in xs], axis=-1)
      y = x * a + (bias - ra_mean.value * a)
      y = jnp.maximum(y, 0.0) if self.relu else y
      return y.astype(dtype)
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = batch_norm_train(
      xs, scale, bias, self.epsilon, self.relu, axis_name
    )
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var)
    return y


class FlaxBatchNorm(nn.BatchNorm):
  """The straightforward reference: the concatenation of a feature map or a
  list of them, nn.BatchNorm, then nn.relu if `relu`; the variance in two
  passes, as the fast BatchNorm's."""

  relu: bool = False
  use_fast_variance: bool = False

  @nn.compact
  def __call__(self, x):
    x = jnp.concatenate(_as_list(x), axis=-1)
    y = super().__call__(x)
    return nn.relu(y) if self.relu else y


def avg_pool_2x2(x):
  """nn.avg_pool(x, (2, 2), strides=(2, 2)) as a reshape and a mean."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def flax_avg_pool_2x2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def max_pool_2x2(x):
  """nn.max_pool(x, (2, 2), strides=(2, 2)) as a reshape and a max (whose
  gradient XLA:CPU computes several times faster than nn.max_pool's)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def flax_max_pool_2x2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class Impl(NamedTuple):
  """The layers a DenseNet is built from."""

  # nn.Conv(features, kernel_size, use_bias, dtype, kernel_init)'s signature
  conv: Any
  batch_norm: Any  # BatchNorm's signature: a map or a list of them, `relu`
  avg_pool_2x2: Callable
  max_pool_2x2: Callable
  # A transition's 1x1 convolution and 2x2 average pooling are linear maps
  # acting on channels and on pixels: they commute. Pooling first gives the
  # same function with a quarter of the convolution's work.
  pool_before_conv: bool


IMPLS = {
  "fast": Impl(
    Conv, BatchNorm, avg_pool_2x2, max_pool_2x2, pool_before_conv=True
  ),
  # nn.Conv's default padding is 'SAME' too.
  "flax": Impl(
    nn.Conv, FlaxBatchNorm, flax_avg_pool_2x2, flax_max_pool_2x2, False
  ),
}
