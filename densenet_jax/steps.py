"""The train state and the pure steps that train.py runs on each device.

`train_step(state, batch)` and `eval_step(state, batch)` are pure functions
with collectives over the named device axis AXIS; make_steps pmaps them
once per setting (cached, so that runs in one process share compilations).
"""

import functools
from typing import Any

import flax.jax_utils
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from densenet_jax import augment, models, optim

AXIS = "batch"  # the pmapped device axis


def replicate(tree):
  """A copy of `tree` on each local device, placed as the pmapped steps
  place their outputs (a mesh over AXIS): a step compiled for its first
  state then serves the states it returns. (flax's default axis name
  places them on another mesh, and the second step compiles again: about
  40 s for the reference network on a 2-core CPU.)"""
  return flax.jax_utils.replicate(tree, axis_name=AXIS)


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # raw uint32 key data: per-step keys are fold_in(rng, step)
  # {"params", "batch_stats"} averaged over steps, or None (no averaging).
  ema: Any = None


# The initialiser runs once, in milliseconds: XLA's backend optimisations
# only slow its compilation (the random draws of every parameter). On a
# 2-core AMD EPYC: cpu_medium 11.1-12.1 s at the default level, 2.5 s at 0;
# the reference network 13.5 s against 7.1. The values are the default
# level's: the same bits for glorot_uniform, within a few units in the last
# place for lecun_normal (tests/test_train.py).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def create_train_state(
  config, model, image_shape, steps_per_epoch: int = 1, images=None
) -> TrainState:
  """Fresh state; `steps_per_epoch` sizes the learning-rate schedule (any
  value will do for a template that only restores a checkpoint). With
  config whiten_stem, the stem kernel whitens the patches of `images` (the
  training split's uint8 images; the optimizer keeps it as it is)."""
  variables = _initialiser(model)(*_init_inputs(config, image_shape))
  if config.get("whiten_stem"):
    if images is None:
      raise ValueError("whiten_stem needs the training images")
    params = jax.tree.map(
      lambda p, stem: (
        jnp.asarray(models.whitening_kernel(images, p.shape)) if stem else p
      ),
      variables["params"],
      optim.stem_kernel_mask(variables["params"]),
    )
    variables = {**variables, "params": params}
  return state_with_variables(config, model, variables, steps_per_epoch)


@functools.lru_cache(maxsize=None)
def _initialiser(model):
  """The jitted initialiser of a model, one for equal models: a second
  fresh state in one process (tests, notebooks) compiles nothing."""
  return jax.jit(
    functools.partial(model.init, train=False),
    compiler_options=INIT_COMPILER_OPTIONS,
  )


def _init_inputs(config, image_shape):
  """The initialiser's key and its batch of one blank image."""
  return (
    jax.random.key(config.seed),
    jnp.zeros((1,) + tuple(image_shape), jnp.float32),
  )


def train_state_shapes(
  config, model, image_shape, steps_per_epoch: int = 1
) -> TrainState:
  """create_train_state's state with a ShapeDtypeStruct for each array,
  computing and compiling nothing: a template to restore a checkpoint
  into."""

  return jax.eval_shape(
    functools.partial(
      state_with_variables, config, model, steps_per_epoch=steps_per_epoch
    ),
    models.variable_shapes(model, image_shape),
  )


def state_with_variables(
  config, model, variables, steps_per_epoch: int = 1
) -> TrainState:
  """The state create_train_state makes, holding the given {"params",
  "batch_stats"} instead of an initialiser's: no compilation of the
  network (its initialiser takes seconds to compile, the reference
  network's 7 s on a 2-core CPU)."""
  key = jax.random.key(config.seed)
  variables = {k: variables[k] for k in ("params", "batch_stats")}
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optim.create_optimizer(config, steps_per_epoch),
    rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    # A copy: the donated train step must not get one buffer twice.
    ema=jax.tree.map(jnp.copy, variables) if config.ema_decay else None,
  )


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(
    jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing
  )
  return optax.softmax_cross_entropy(logits, targets)


def update_ema(ema, params, batch_stats, step, decay: float):
  """One step of the weights' moving average; the decay warms up as
  (1 + step) / (10 + step), so early averages forget the random init."""
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  new = {"params": params, "batch_stats": batch_stats}
  return jax.tree.map(lambda e, x: decay * e + (1 - decay) * x, ema, new)


def train_step(
  state: TrainState,
  batch: dict,
  augment_config=None,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
  image_px: int = 0,
  frozen_stem: bool = False,
):
  """One optimisation step on a device's shard; collectives over AXIS.
  `augment_config`: augment.settings of the config, or None (no
  augmentation); `ema_decay` is used only when the state has `ema`;
  `image_px`: the model sees the (augmented) images scaled to that side
  (bilinear, antialiased), 0: as they are; `frozen_stem`: the stem kernel
  gets no gradient (config whiten_stem: the optimizer keeps it), so that
  none is computed (cpu_medium then trains 4-8% faster on a 2-core CPU:
  `python -m densenet_jax.benchmark --model cpu_medium [--whiten-stem]`)."""
  images = models.scale_inputs(batch["image"])
  if augment_config is not None:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    flips = batch["flip"] if augment_config.alternating_flips else None
    images = augment.augment_batch(
      key, images, augment_config, batch["index"], flips
    )
  if image_px:
    n, _, _, c = images.shape
    images = jax.image.resize(images, (n, image_px, image_px, c), "linear")

  def loss_fn(params):
    if frozen_stem:
      params = jax.tree.map(
        lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p,
        params,
        optim.stem_kernel_mask(params),
      )
    logits, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    return loss.mean(), (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, updates)), grads = grad_fn(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  # BatchNorm already averaged its statistics over AXIS (bn_axis_name).
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  if state.ema is not None:
    ema = update_ema(
      state.ema, state.params, state.batch_stats, state.step, ema_decay
    )
    state = state.replace(ema=ema)
  metrics = {
    "loss": loss,
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
  }
  return state, jax.lax.pmean(metrics, AXIS)


def eval_variables(state: TrainState) -> dict:
  """The variables evaluation uses: the moving average when there is one."""
  if state.ema is not None:
    return state.ema
  return {"params": state.params, "batch_stats": state.batch_stats}


def eval_sums(
  apply_fn, variables, batch: dict, tta=models.NO_TTA, num_classes=None
) -> dict:
  """Mask-weighted sums of one batch (loss, correct, count), so that a padded
  batch counts each example once; with `num_classes`, also the confusion
  matrix (rows: true class, columns: predicted class)."""
  logits = models.eval_logits(apply_fn, variables, batch["image"], tta)
  labels, mask = batch["label"], batch["mask"]
  predicted = jnp.argmax(logits, -1)
  sums = {
    "loss": jnp.sum(cross_entropy(logits, labels) * mask),
    "correct": jnp.sum((predicted == labels) * mask),
    "count": jnp.sum(mask),
  }
  if num_classes is not None:
    true_1hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    pred_1hot = jax.nn.one_hot(predicted, num_classes, dtype=jnp.int32)
    weighted = true_1hot * mask.astype(jnp.int32)[:, None]
    sums["confusion"] = weighted.T @ pred_1hot
  return sums


def eval_step(state: TrainState, batch: dict, tta=models.NO_TTA) -> dict:
  """eval_sums of a device's shard, summed over AXIS."""
  sums = eval_sums(state.apply_fn, eval_variables(state), batch, tta)
  return jax.lax.psum(sums, AXIS)


def make_steps_for(config, image_px: int = 0):
  """The pmapped train and eval steps of a config: its augmentation, label
  smoothing, EMA decay, test-time augmentation and frozen (whitened) stem;
  the train step's images scaled to `image_px` if given (progressive
  resizing)."""
  return make_steps(
    augment.settings(config.augment) if config.augment.enabled else None,
    config.label_smoothing,
    config.ema_decay,
    models.TTA.of(config),
    image_px,
    bool(config.get("whiten_stem", False)),
  )


def make_steps(
  augment_config=None,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
  tta=models.NO_TTA,
  image_px: int = 0,
  frozen_stem: bool = False,
):
  """The pmapped train and eval steps; equal settings give the identical
  functions, so that runs in one process (tests, notebooks, resumes) share
  their compilations."""
  return _cached_steps(
    augment_config, label_smoothing, ema_decay, tta, image_px, frozen_stem
  )


@functools.lru_cache(maxsize=None)
def _cached_steps(
  augment_config, label_smoothing, ema_decay, tta, image_px, frozen_stem
):
  p_train = jax.pmap(
    functools.partial(
      train_step,
      augment_config=augment_config,
      label_smoothing=label_smoothing,
      ema_decay=ema_decay,
      image_px=image_px,
      frozen_stem=frozen_stem,
    ),
    axis_name=AXIS,
    donate_argnums=(0,),
  )
  return p_train, make_eval_step(tta)


@functools.lru_cache(maxsize=None)
def make_eval_step(tta=models.NO_TTA):
  """The pmapped eval step averaging the views of `tta`; one function per
  setting, as make_steps'."""
  return jax.pmap(functools.partial(eval_step, tta=tta), AXIS)
