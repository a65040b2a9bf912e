"""DenseNet for CIFAR in flax.linen; the tutorial's exact network is a preset.

The layer order follows the reference Keras recipe: a stem conv3x3 with bias
and ReLU followed by BatchNorm (Keras' default epsilon 1e-3), then dense blocks
of BN-ReLU-conv1x1(bottleneck)-BN-ReLU-conv3x3(growth) layers whose outputs are
concatenated onto their inputs, transitions BN-ReLU-conv1x1-avgpool2x2, and a
BN-ReLU-global-average-pool-Dense head. The model returns logits; the softmax
of the tutorial's last layer lives in the loss.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from densenet_jax import errors, layers

KERAS_BN_EPSILON = 1.001e-5  # keras.applications.densenet's epsilon
STEM_BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default
BN_MOMENTUM = 0.99  # Keras' default moving-average momentum
# Kernel initialisers: Keras' Conv2D and Dense default, and flax's.
GLOROT_UNIFORM = nn.initializers.glorot_uniform()
LECUN_NORMAL = nn.initializers.lecun_normal()


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bottleneck)-BN-ReLU-conv3x3(growth) of the channel-wise
  concatenation of `features`, the block's feature maps so far; returns the
  `growth_rate` new channels. (The norm layers take the list: the fast one
  never materialises the concatenation.)"""

  growth_rate: int
  bottleneck_width: int
  norm: Any
  conv: Any = nn.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    y = features
    if self.bottleneck_width:
      y = self.norm(relu=True, name="bn1")(y)
      y = conv(self.bottleneck_width * self.growth_rate, (1, 1), name="conv1")(
        y
      )
    y = self.norm(relu=True, name="bn2")(y)
    return conv(self.growth_rate, (3, 3), name="conv2")(y)


class DenseBlock(nn.Module):
  """`num_layers` layers made by `layer` (a DenseLayer without its name),
  each adding its channels; returns the list of feature maps (input first)
  whose concatenation is the block's output."""

  num_layers: int
  layer: Callable[..., DenseLayer]

  @nn.compact
  def __call__(self, x):
    features = [x]
    for i in range(self.num_layers):
      features.append(self.layer(name=f"layer{i}")(features))
    return features


POOLS = ("avg", "max")


class Transition(nn.Module):
  """BN-ReLU-conv1x1(floor(channels * reduction))-pool 2x2, `pool` "avg"
  (the paper's and the tutorial's) or "max"."""

  reduction: float
  norm: Any
  conv: Any = nn.Conv
  impl: layers.Impl = layers.IMPLS["flax"]
  dtype: Any = jnp.float32
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    x = self.norm(relu=True, name="bn")(x)
    conv = self.conv(
      int(x.shape[-1] * self.reduction),
      (1, 1),
      use_bias=False,
      dtype=self.dtype,
      name="conv",
    )
    if self.pool == "max":
      return self.impl.max_pool_2x2(conv(x))
    if self.impl.pool_before_conv:
      return conv(self.impl.avg_pool_2x2(x))
    return self.impl.avg_pool_2x2(conv(x))


class DenseNet(nn.Module):
  """A configurable CIFAR DenseNet (NHWC inputs scaled to [0, 1]).

  Attributes:
    blocks: number of dense layers in each dense block.
    growth_rate: channels each dense layer adds (k): one number, or one per
      block.
    bottleneck_width: the 1x1 bottleneck has `bottleneck_width * growth_rate`
      channels; 0 leaves out the bottleneck (plain DenseNet layers).
    stem_features: channels of the stem convolution.
    reduction: a transition keeps floor(channels * reduction) channels.
    transition_after_last: the tutorial puts a transition after every block,
      the last one too; the DenseNet paper does not.
    transition_pool: "avg" (the paper's and the tutorial's) or "max": the
      2x2 pooling of the transitions' 1x1 convolutions.
    num_classes: outputs of the classifier.
    stem_bn, stem_relu, stem_bias: the tutorial's stem is conv3x3 with bias,
      ReLU, then BatchNorm; the paper's DenseNet-BC stem is a bare conv.
    dtype: computation dtype (parameters stay float32).
    kernel_init: initialiser of every convolution and dense kernel (biases
      start at zero): Keras' glorot_uniform for the tutorial's network,
      flax's lecun_normal for the other presets.
    bn_axis_name: named mapped axis over which BatchNorm averages batch
      statistics (set by the pmapped train step so that N devices see the
      statistics of the whole global batch).
    impl: 'fast' (default) or 'flax': the layers of densenet_jax.layers,
      or plain flax ones; the same variables and math either way.
  """

  blocks: Sequence[int] = (4, 8, 16)
  growth_rate: int | Sequence[int] = 32
  bottleneck_width: int = 2
  stem_features: int = 16
  reduction: float = 0.5
  transition_after_last: bool = True
  transition_pool: str = "avg"
  num_classes: int = 10
  stem_bn: bool = True
  stem_relu: bool = True
  stem_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = LECUN_NORMAL
  bn_axis_name: str | None = None
  impl: str = "fast"

  @property
  def downsampling(self) -> int:
    """How many times smaller a side is at the end: each transition pools
    2x2, so an image side must be a multiple of this."""
    transitions = len(self.blocks) - (0 if self.transition_after_last else 1)
    return 2**transitions

  def growth_rates(self) -> tuple:
    """The growth rate of each block."""
    if isinstance(self.growth_rate, int):
      return (self.growth_rate,) * len(self.blocks)
    if len(self.growth_rate) != len(self.blocks):
      raise errors.UserError(
        f"growth_rate {tuple(self.growth_rate)} has {len(self.growth_rate)} "
        f"entries for {len(self.blocks)} blocks"
      )
    return tuple(self.growth_rate)

  def _checked_impl(self) -> layers.Impl:
    """The layers of `impl`; a UserError for an unknown impl or pooling."""
    errors.check_choice("impl", self.impl, sorted(layers.IMPLS))
    errors.check_choice("transition_pool", self.transition_pool, POOLS)
    return layers.IMPLS[self.impl]

  def _stem(self, x, conv, norm):
    """The stem convolution (with its ReLU and BatchNorm where the preset
    has them) of the input images, in `dtype` at the end."""
    # The stem computes in float32 whatever `dtype`: training can drive its
    # conv's bias far above the spread of its outputs (to 20 against a
    # spread below 1 in a bfloat16 cpu_check run), which bfloat16's 8-bit
    # mantissa then rounds away, and with it the stem BatchNorm's statistics:
    # its running averages stopped matching the batches and evaluation fell
    # to chance. Three input channels make float32 here cheap. (float64,
    # for gradient checks, stays float64.)
    stem_dtype = jnp.promote_types(self.dtype, jnp.float32)
    x = conv(
      self.stem_features,
      (3, 3),
      use_bias=self.stem_bias,
      dtype=stem_dtype,
      name="stem_conv",
    )(x.astype(stem_dtype))
    if self.stem_relu:
      x = nn.relu(x)
    if self.stem_bn:
      x = norm(epsilon=STEM_BN_EPSILON, dtype=stem_dtype, name="stem_bn")(x)
    return x.astype(self.dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    impl = self._checked_impl()
    conv = functools.partial(impl.conv, kernel_init=self.kernel_init)
    norm = functools.partial(
      impl.batch_norm,
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=KERAS_BN_EPSILON,
      dtype=self.dtype,
      axis_name=self.bn_axis_name if train else None,
    )
    x = self._stem(x, conv, norm)
    growth_rates = self.growth_rates()
    for b, num_layers in enumerate(self.blocks):
      layer = functools.partial(
        DenseLayer,
        growth_rates[b],
        self.bottleneck_width,
        norm,
        conv,
        self.dtype,
      )
      x = DenseBlock(num_layers, layer, name=f"block{b}")(x)
      if b < len(self.blocks) - 1 or self.transition_after_last:
        x = Transition(
          self.reduction,
          norm,
          conv,
          impl,
          self.dtype,
          self.transition_pool,
          name=f"transition{b}",
        )(x)
    x = norm(relu=True, name="final_bn")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      kernel_init=self.kernel_init,
      name="classifier",
    )(x)
    return x.astype(jnp.float32)


# The tutorial's network: 1,359,842 trainable parameters, initialised as
# Keras initialises it (glorot_uniform kernels, zero biases).
reference = functools.partial(DenseNet, kernel_init=GLOROT_UNIFORM)

# Huang et al. (2017), DenseNet-BC with L=100, k=12: 3 blocks of 16 bottleneck
# layers, compression 0.5, a 2k-channel stem conv without BN, no transition
# after the last block. 769,162 parameters for 10 classes. Initialised with
# flax's default (lecun_normal kernels), not the Torch code's He normal.
densenet_bc_100_k12 = functools.partial(
  DenseNet,
  blocks=(16, 16, 16),
  growth_rate=12,
  bottleneck_width=4,
  stem_features=24,
  transition_after_last=False,
  stem_bn=False,
  stem_relu=False,
  stem_bias=False,
)

# For learning checks on a CPU: the reference's layers, made cheap. The empty
# first block puts a transition (1x1 conv, 2x2 average pool) right after the
# stem, so the dense layers run at 16x16, 8x8 and 4x4 only; no bottlenecks
# (a few wide 3x3 convolutions run faster on a CPU than many narrow ones).
# flax's default initialisation (lecun_normal kernels).
# 234,242 parameters, 38 MFLOPs per 32x32 image.
cpu_small = functools.partial(
  DenseNet,
  blocks=(0, 3, 3, 3),
  growth_rate=32,
  bottleneck_width=0,
  stem_features=32,
  transition_after_last=False,
)

# The network of the cpu90 recipe: cpu_small with a fourth layer in each
# block. 420,458 parameters.
cpu_medium = functools.partial(cpu_small, blocks=(0, 4, 4, 4))

# cpu_medium with a stem twice as wide: 32 channels, not 16, carry the
# image into the 16x16 block.
cpu_wide_stem = functools.partial(cpu_medium, stem_features=64)

# cpu_medium with eight layers in its last block: parameters (742,154)
# where they are cheap, at 4x4 (16% more multiply-adds).
cpu_deep_tail = functools.partial(cpu_medium, blocks=(0, 4, 4, 8))

# cpu_medium with one dense layer at 32x32, before the first transition: the
# image's full resolution gets a 3x3 layer of its own, not just the stem.
cpu_full_res = functools.partial(cpu_medium, blocks=(1, 4, 4, 4))

# cpu_medium twice as wide: growth 64, so that the 16x16, 8x8 and 4x4 blocks
# end on 272, 392 and 452 channels (airbench's network is 256 wide there),
# for about 3.5 times the multiply-adds: a run of fewer epochs.
# 1,592,554 parameters.
cpu_growth64 = functools.partial(cpu_medium, growth_rate=64)

# cpu_medium whose transitions max-pool their 1x1 convolutions' outputs, as
# airbench's network max-pools its convolutions': better epoch for epoch,
# 16% slower, level with cpu_medium after an hour. 420,458 parameters.
cpu_medium_max = functools.partial(cpu_medium, transition_pool="max")

# airbench's proportions as a DenseNet: few, wide dense layers (growth 32,
# 64, 128 and 128 in blocks of 1, 2, 2 and 2 at 32x32, 16x16, 8x8 and 4x4,
# so that the blocks end on 64, 160, 336 and 424 channels; airbench's network
# is 64 and 256 wide) and max-pooling transitions, where cpu_medium has many
# narrow layers. About twice cpu_medium's multiply-adds.
cpu_air = functools.partial(
  cpu_medium,
  blocks=(1, 2, 2, 2),
  growth_rate=(32, 64, 128, 128),
  transition_pool="max",
)

# Test-size network: the reference's structure, a few thousand parameters.
tiny = functools.partial(
  DenseNet, blocks=(1, 1), growth_rate=4, stem_features=4
)

PRESETS = {
  "reference": reference,
  "densenet_bc_100_k12": densenet_bc_100_k12,
  "cpu_small": cpu_small,
  "cpu_medium": cpu_medium,
  "cpu_wide_stem": cpu_wide_stem,
  "cpu_deep_tail": cpu_deep_tail,
  "cpu_full_res": cpu_full_res,
  "cpu_growth64": cpu_growth64,
  "cpu_medium_max": cpu_medium_max,
  "cpu_air": cpu_air,
  "tiny": tiny,
}


def create_model(preset: str, **overrides) -> DenseNet:
  """Builds a preset by name; `overrides` replace any DenseNet attribute."""
  errors.check_choice("model preset", preset, sorted(PRESETS))
  return PRESETS[preset](**overrides)


def from_config(config, num_classes: int, axis_name=None) -> DenseNet:
  """The network of a run's config (its model, dtype and impl), for training
  (with `axis_name`, the pmapped axis), inference and benchmarks alike."""
  return _cached_model(
    config.model,
    num_classes,
    config.get("dtype", "float32"),
    axis_name,
    config.get("impl", "fast"),
  )


# Models are static parts of the TrainState, hence of the compiled steps'
# cache keys: equal settings must give identical objects so that runs in one
# process (tests, notebooks, resumes) reuse compilations.
@functools.lru_cache(maxsize=None)
def _cached_model(preset, num_classes, dtype, axis_name, impl) -> DenseNet:
  return create_model(
    preset,
    num_classes=num_classes,
    dtype=jnp.dtype(dtype),
    bn_axis_name=axis_name,
    impl=impl,
  )


# How many images whitening_kernel reads: the first ones of the training
# split (0.5 s on a 2-core CPU). The filters of 2,000 and of 10,000 CIFAR-10
# images agree to cosines of 0.999 and lengths within 1.1%, but for the
# last of the 16 for cpu_medium, whose eigenvalue has a close neighbour.
WHITENING_IMAGES = 2000
WHITENING_EPS = 5e-4  # airbench's, added to the eigenvalues


def check_whitenable(kernel_shape) -> None:
  """A UserError unless a stem kernel of this shape (kh, kw, channels,
  features) can whiten: an even number of filters, at most two (both
  signs) per patch dimension."""
  kh, kw, channels, features = kernel_shape
  dims = kh * kw * channels
  if features % 2 or not 0 < features <= 2 * dims:
    raise errors.UserError(
      f"a whitened {kh}x{kw} stem needs an even number of filters, at most "
      f"{2 * dims} ({dims} patch dimensions, each with both signs), not "
      f"{features}"
    )


def whitening_kernel(images, kernel_shape) -> np.ndarray:
  """A stem kernel (kh, kw, channels, features) that whitens the patches of
  uint8 `images` (N, H, W, channels), scaled as in training: airbench's
  initialisation of its first convolution. Its first features/2 filters are
  the leading eigenvectors of the patches' (uncentred) second moments, each
  divided by the square root of its eigenvalue (plus WHITENING_EPS), so
  that their outputs on these patches are uncorrelated with unit variance;
  the other half are their negatives, so that a ReLU after the stem keeps
  both signs. Computed in float64 from the first WHITENING_IMAGES."""
  check_whitenable(kernel_shape)
  kh, kw, channels, features = kernel_shape
  dims = kh * kw * channels
  moments = np.zeros((dims, dims))
  count = 0
  for start in range(0, min(len(images), WHITENING_IMAGES), 250):
    chunk = np.asarray(images[start : min(start + 250, WHITENING_IMAGES)])
    x = chunk.astype(np.float64) / 255.0
    # (N, H', W', channels, kh, kw) -> rows in the kernel's (kh, kw, c) order
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), (1, 2))
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims)
    moments += patches.T @ patches
    count += len(patches)
  eigenvalues, eigenvectors = np.linalg.eigh(moments / count)
  top = np.arange(dims)[::-1][: features // 2]  # eigh: ascending
  scaled = eigenvectors[:, top] / np.sqrt(eigenvalues[top] + WHITENING_EPS)
  kernel = np.concatenate([scaled, -scaled], axis=1)
  return kernel.reshape(kh, kw, channels, features).astype(np.float32)


def scale_inputs(images):
  """uint8 pixels (N, H, W, C) -> the network's float32 inputs in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


class TTA(NamedTuple):
  """Test-time augmentation: the views of an image whose logits evaluation
  averages (config tta_flip and tta_translate_px)."""

  flip: bool = False  # the image and its mirror
  # Also the image moved this many pixels down-right and up-left (uncovered
  # pixels 0, as the training crops' padding), weighing 1/4 each against
  # the image's 1/2, as airbench's multi-crop evaluation.
  translate_px: int = 0

  @classmethod
  def of(cls, config) -> "TTA":
    return cls(
      bool(config.get("tta_flip", False)),
      int(config.get("tta_translate_px", 0)),
    )

  @classmethod
  def validation_of(cls, config) -> "TTA":
    """The views validation averages: the test's, or with
    validate_tta=False the image alone."""
    return cls.of(config) if config.get("validate_tta", True) else NO_TTA

  @property
  def views(self) -> int:
    """The network's passes over each image."""
    return (2 if self.flip else 1) * (3 if self.translate_px else 1)


NO_TTA = TTA()


# On a CPU, evaluation runs a batch in chunks of EVAL_CHUNK_CPU images, one
# after the other (lax.map): a chunk's feature maps stay in the caches from
# layer to layer, where a whole batch's go out to memory and back. Batches
# of 128 on a 2-core AMD EPYC (experiments/README.md): the reference network
# 135 images/s whole, 199-203 in chunks of 8 (4: 170, 16: 189-191, 32: 158);
# cpu_medium 1156 whole, 1565-1584 in chunks of 16 to 64. Accelerators
# take the batch whole.
EVAL_CHUNK_CPU = 8


def eval_chunk() -> int:
  """Images eval_logits evaluates at a time on this backend; 0: all."""
  return EVAL_CHUNK_CPU if jax.default_backend() == "cpu" else 0


def eval_logits(
  apply_fn, variables, images, tta: TTA = NO_TTA, chunk: int | None = None
):
  """Inference logits of uint8 images (N, H, W, C), scaled as in training,
  averaged over the views of `tta`; computed `chunk` images at a time
  (default eval_chunk(); 0: all at once), the same logits either way."""
  chunk = eval_chunk() if chunk is None else chunk
  n = images.shape[0]
  if not chunk or n <= chunk:
    return _view_logits(apply_fn, variables, images, tta)
  pad = ((0, -n % chunk),) + ((0, 0),) * (images.ndim - 1)
  chunks = jnp.pad(images, pad).reshape((-1, chunk) + images.shape[1:])
  logits = jax.lax.map(
    lambda x: _view_logits(apply_fn, variables, x, tta), chunks
  )
  return logits.reshape((-1,) + logits.shape[2:])[:n]


def _view_logits(apply_fn, variables, images, tta: TTA):
  images = scale_inputs(images)

  def with_mirror(x):
    logits = apply_fn(variables, x, train=False)
    if tta.flip:
      logits = (logits + apply_fn(variables, x[:, :, ::-1], train=False)) / 2
    return logits

  logits = with_mirror(images)
  if tta.translate_px:
    p = tta.translate_px
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    down_right = padded[:, :h, :w]
    up_left = padded[:, 2 * p :, 2 * p :]
    moved = with_mirror(down_right) + with_mirror(up_left)
    logits = 0.5 * logits + 0.25 * moved
  return logits


def variable_shapes(model: DenseNet, image_shape=(32, 32, 3)) -> dict:
  """ShapeDtypeStructs of params and batch_stats, without computing them."""
  return jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jnp.zeros((1,) + tuple(image_shape), jnp.float32),
  )


def summary(model: DenseNet, image_shape=(32, 32, 3), depth: int = 1) -> str:
  """The layer/parameter table (flax nn.tabulate) for a batch of one;
  depth=1 lists blocks and transitions, larger depths their layers."""
  table = nn.tabulate(
    model, jax.random.key(0), depth=depth, console_kwargs={"width": 120}
  )
  return table(jnp.zeros((1,) + tuple(image_shape)), train=False)
