"""Optimizers and learning-rate schedules built from a config, with optax.

- `optimizer="adam"`: the tutorial's Adam, Keras' formula with Keras'
  defaults (`keras_adam`) and a constant learning rate (the reference
  recipe);
- `optimizer="sgd"`: SGD with (Nesterov) momentum and weight decay, either
  coupled ("l2": added to the gradient before momentum, as in the DenseNet
  paper's Torch code and PyTorch's `SGD(weight_decay=...)`) or decoupled
  ("decoupled": p -= lr * weight_decay * p beside the momentum step, as in
  SGDW/AdamW), on conv and dense kernels only or on every parameter; the
  steps of BatchNorm offsets can be scaled up (`bn_bias_lr_scale`), as
  airbench trains them 64 times faster than the rest;
- `optimizer="muon"`: the same SGD, but each conv kernel steps along its
  Nesterov momentum orthogonalized (Muon, `optax.contrib.scale_by_muon`:
  a few Newton-Schulz iterations make the (kh * kw * in) x out matrix's
  singular values about 1), as airbench's fastest CIFAR-10 trainer steps
  its convolutions; dense kernels, biases and BatchNorm as with "sgd".

Every optimizer is wrapped in `optax.inject_hyperparams`, so the learning
rate of the current step (a schedule's value) is in
`opt_state.hyperparams["learning_rate"]`, where the loop logs it from.
With a time budget the schedule is `Retimable`: the run's length, decided
and corrected as it goes, is in the optimizer state (`retime`), so the
compiled steps stay as they are.

Schedules (`lr_schedule`), each after `warmup_epochs` of linear warm-up from
0 when that is positive:

- "constant": `learning_rate` throughout;
- "step": multiplied by `lr_step_factor` at each fraction of training in
  `lr_step_fractions` (the paper: 0.1 at 50% and 75%);
- "cosine": cosine decay to `learning_rate * final_lr_fraction`;
- "onecycle": linear decay to `learning_rate * final_lr_fraction` (with the
  warm-up, the triangular one-cycle of fast CIFAR trainers).
"""

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from densenet_jax import errors

OPTIMIZERS = ("adam", "sgd", "muon")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


def kernel_mask(params):
  """True for conv and dense kernels, False for BatchNorm scales/offsets and
  biases (all 1-D): weight decay on the latter only limits capacity."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def batch_norm_bias_mask(params):
  """True for BatchNorm offsets: the `bias` of every module whose parameters
  are a `scale` and a `bias` (BatchNorm's)."""

  def mask(tree):
    norm = set(tree) == {"scale", "bias"}
    return type(tree)(
      {
        k: mask(v) if isinstance(v, Mapping) else norm and k == "bias"
        for k, v in tree.items()
      }
    )

  return mask(params)


def stem_kernel_mask(params):
  """True for the stem convolution's kernel only."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: (
      [getattr(k, "key", None) for k in path] == ["stem_conv", "kernel"]
    ),
    params,
  )


def with_stem_frozen(tx, freeze_stem: bool) -> optax.GradientTransformation:
  """`tx`, whose updates of the stem kernel are zero when `freeze_stem` (a
  whitened stem, config whiten_stem, keeps its initial filters)."""
  if not freeze_stem:
    return tx
  return optax.chain(tx, optax.masked(optax.set_to_zero(), stem_kernel_mask))


def learning_rate_schedule(config, steps_per_epoch: int):
  """The config's learning rate: a float when constant, else an optax
  schedule of the step."""
  kind, peak = config.lr_schedule, config.learning_rate
  errors.check_choice("lr_schedule", kind, SCHEDULES)
  total = config.num_epochs * steps_per_epoch
  warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
  if kind == "constant" and not warmup:
    return peak  # a plain number keeps the reference's optimizer state
  rest = max(total - warmup, 1)
  if kind == "constant":
    main = optax.constant_schedule(peak)
  elif kind == "step":
    # Boundaries are fractions of all training, counted after the warm-up.
    main = optax.piecewise_constant_schedule(
      peak,
      {
        max(round(f * total) - warmup, 0): config.lr_step_factor
        for f in config.lr_step_fractions
      },
    )
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(
      peak, rest, alpha=config.final_lr_fraction
    )
  else:
    main = optax.linear_schedule(peak, peak * config.final_lr_fraction, rest)
  if not warmup:
    return main
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), main], [warmup]
  )


class ClockState(NamedTuple):
  """A retimable schedule's state: the step count and the line that maps it
  to a position on the schedule, offset + rate * count, which reaches `end`
  (the schedule's own length) on the run's last step."""

  count: jax.Array
  offset: jax.Array
  rate: jax.Array
  end: jax.Array


class Retimable:
  """An optax stateful schedule (for `inject_hyperparams`) whose rest can be
  fitted to another number of steps between two steps (`retime`): the
  length lives in the state, not in the compiled update."""

  def __init__(self, schedule, end_step: int):
    self.schedule, self.end_step = schedule, end_step

  def init(self) -> ClockState:
    return ClockState(
      jnp.zeros([], jnp.int32),
      jnp.zeros([], jnp.float32),
      jnp.ones([], jnp.float32),
      jnp.asarray(self.end_step, jnp.float32),
    )

  def update(self, state: ClockState, **extra_args) -> ClockState:
    del extra_args
    return state._replace(count=optax.safe_increment(state.count))

  def __call__(self, state: ClockState, **extra_args):
    del extra_args
    return self.schedule(state.offset + state.rate * state.count)


def retime(opt_state, total_steps: int):
  """The optimizer state with its schedule's rest fitted to end after
  `total_steps` steps in all: from the current step's position the rest
  is stretched or shrunk evenly, so the learning rate goes on from where
  it is (a one-cycle's decay stays a straight line, now to zero at the new
  end). Unchanged for a schedule that is not Retimable."""
  clock = opt_state.hyperparams_states.get("learning_rate")
  if not isinstance(clock, ClockState):
    return opt_state
  count = int(clock.count)
  position = float(clock.offset) + float(clock.rate) * count
  left = total_steps - count
  rate = (float(clock.end) - position) / left if left > 0 else 0.0
  clock = clock._replace(
    offset=np.float32(position - rate * count if left > 0 else clock.end),
    rate=np.float32(rate),
  )
  states = dict(opt_state.hyperparams_states, learning_rate=clock)
  return opt_state._replace(hyperparams_states=states)


class KerasAdamState(NamedTuple):
  count: jax.Array  # steps taken
  mu: optax.Updates  # first moments
  nu: optax.Updates  # second moments


def scale_by_keras_adam(b1: float, b2: float, eps: float):
  """Keras' (TF 2.1) Adam direction: m / (sqrt(v) + eps) times
  sqrt(1 - b2^t) / (1 - b1^t). optax.adam adds eps to the bias-corrected
  sqrt(v) instead, a different step wherever sqrt(v) is near eps."""

  def init(params):
    return KerasAdamState(
      jnp.zeros([], jnp.int32),
      jax.tree.map(jnp.zeros_like, params),
      jax.tree.map(jnp.zeros_like, params),
    )

  def update(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    t = count.astype(jnp.float32)
    alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def keras_adam(
  learning_rate, b1: float, b2: float, eps: float, freeze_stem: bool = False
):
  """Adam as tf.keras.optimizers.Adam computes it (scale_by_keras_adam)."""
  tx = optax.chain(
    scale_by_keras_adam(b1, b2, eps),
    optax.scale_by_learning_rate(learning_rate),
  )
  return with_stem_frozen(tx, freeze_stem)


# A conv kernel (kh, kw, in, out) as the matrix Muon orthogonalizes.
CONV_KERNEL_AXES = optax.contrib.MuonDimensionNumbers(
  reduction_axis=(0, 1, 2), output_axis=3
)


def conv_kernel_labels(params):
  """Which transformation steps each parameter: "muon" for conv kernels
  (4-D), "sgd" for the rest."""
  return jax.tree.map(lambda p: "muon" if p.ndim == 4 else "sgd", params)


def momentum_step(
  momentum: float, nesterov: bool, muon: bool
) -> optax.GradientTransformation:
  """(Nesterov) momentum; with `muon`, conv kernels' momentum orthogonalized
  (the gradients' scale drops out: their updates have singular values of
  about 1)."""
  step = optax.trace(decay=momentum, nesterov=nesterov)
  if not muon:
    return step
  orthogonal = optax.contrib.scale_by_muon(
    beta=momentum,
    nesterov=nesterov,
    weight_dimension_numbers=lambda tree: jax.tree.map(
      lambda _: CONV_KERNEL_AXES, tree
    ),
  )
  return optax.partition({"muon": orthogonal, "sgd": step}, conv_kernel_labels)


def sgd(
  learning_rate,
  momentum: float,
  nesterov: bool,
  weight_decay: float,
  decoupled: bool,
  kernels_only: bool,
  bn_bias_lr_scale: float = 1.0,
  muon: bool = False,
  freeze_stem: bool = False,
) -> optax.GradientTransformation:
  """SGD with momentum and coupled or decoupled weight decay; the steps of
  BatchNorm offsets (their weight decay included) times `bn_bias_lr_scale`;
  with `muon`, conv kernels step along their orthogonalized momentum."""
  decay = optax.add_decayed_weights(
    weight_decay, kernel_mask if kernels_only else None
  )
  step = [momentum_step(momentum, nesterov, muon)]
  step = step + [decay] if decoupled else [decay] + step
  step.append(optax.scale_by_learning_rate(learning_rate))
  if bn_bias_lr_scale != 1:
    step.append(
      optax.masked(optax.scale(bn_bias_lr_scale), batch_norm_bias_mask)
    )
  return with_stem_frozen(optax.chain(*step), freeze_stem)


# The fields each optimizer and schedule reads: with the step count, the
# cache key of create_optimizer.
_SGD_FIELDS = (
  "momentum",
  "nesterov",
  "weight_decay",
  "weight_decay_mode",
  "weight_decay_kernels_only",
  "bn_bias_lr_scale",
)
_OPTIMIZER_FIELDS = {
  "adam": ("adam_b1", "adam_b2", "adam_eps"),
  "sgd": _SGD_FIELDS,
  "muon": _SGD_FIELDS,
}
_SCHEDULE_FIELDS = {
  "constant": (),
  "step": ("lr_step_fractions", "lr_step_factor"),
  "cosine": ("final_lr_fraction",),
  "onecycle": ("final_lr_fraction",),
}


def check_adam_fields(config) -> None:
  """Adam takes neither weight decay nor a BatchNorm offset learning-rate
  scale: a config asking Adam for them is refused, not half-run."""
  if config.get("optimizer") != "adam":
    return
  if config.get("weight_decay"):
    raise errors.UserError(
      f"weight_decay={config.weight_decay} needs sgd or muon"
    )
  if config.get("bn_bias_lr_scale", 1) != 1:
    raise errors.UserError(
      f"bn_bias_lr_scale={config.bn_bias_lr_scale} needs sgd or muon"
    )


def create_optimizer(config, steps_per_epoch: int = 1):
  """The config's optimizer; `steps_per_epoch` sets the schedule's length
  (any value will do for a template that only restores a checkpoint)."""
  errors.check_choice("optimizer", config.optimizer, OPTIMIZERS)
  check_adam_fields(config)
  if config.optimizer != "adam":
    errors.check_choice(
      "weight_decay_mode", config.weight_decay_mode, WEIGHT_DECAY_MODES
    )
  learning_rate_schedule(config, steps_per_epoch)  # fails early if wrong
  return _cached_optimizer(*_used_settings(config, steps_per_epoch))


def _used_settings(config, steps_per_epoch: int):
  """The fields this optimizer and schedule read, frozen (hashable), and the
  step count the schedule needs: runs that differ only elsewhere (say, two
  Adam runs of different lengths) get the same key."""
  names = ["optimizer", "learning_rate", "lr_schedule", "warmup_epochs"]
  names += _OPTIMIZER_FIELDS[config.optimizer]
  names += _SCHEDULE_FIELDS[config.lr_schedule]
  settings = {name: config[name] for name in names}
  settings["freeze_stem"] = bool(config.get("whiten_stem", False))
  if config.lr_schedule == "constant" and not config.warmup_epochs:
    settings["num_epochs"], steps_per_epoch = 1, 1  # the length is unused
  else:
    settings["num_epochs"] = config.num_epochs
    settings["retimable"] = bool(config.get("time_budget_minutes"))
  return ml_collections.FrozenConfigDict(settings), steps_per_epoch


# Optimizers are static parts of the TrainState, hence of the compiled steps'
# cache keys: equal settings must give the identical object, so that runs in
# one process (tests, notebooks, resumes) reuse compilations.
@functools.lru_cache(maxsize=None)
def _cached_optimizer(settings, steps_per_epoch: int):
  learning_rate = learning_rate_schedule(settings, steps_per_epoch)
  if settings.get("retimable"):
    learning_rate = Retimable(
      learning_rate, settings.num_epochs * steps_per_epoch
    )
  if settings.optimizer == "adam":
    return optax.inject_hyperparams(keras_adam, static_args="freeze_stem")(
      learning_rate=learning_rate,
      b1=settings.adam_b1,
      b2=settings.adam_b2,
      eps=settings.adam_eps,
      freeze_stem=settings.freeze_stem,
    )
  return optax.inject_hyperparams(
    sgd,
    static_args=(
      "nesterov",
      "decoupled",
      "kernels_only",
      "bn_bias_lr_scale",
      "muon",
      "freeze_stem",
    ),
  )(
    learning_rate=learning_rate,
    momentum=settings.momentum,
    nesterov=settings.nesterov,
    weight_decay=settings.weight_decay,
    decoupled=settings.weight_decay_mode == "decoupled",
    kernels_only=settings.weight_decay_kernels_only,
    bn_bias_lr_scale=settings.bn_bias_lr_scale,
    muon=settings.optimizer == "muon",
    freeze_stem=settings.freeze_stem,
  )
