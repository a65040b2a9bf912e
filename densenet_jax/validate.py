"""Checks a configuration once, right after parsing, before any data, model
or JAX work: a wrong value costs the user seconds, not a data load.

`config(cfg)` checks types, ranges, finiteness and names of every field
present, and the split sizes against the data set's known sizes; every
command calls it (training on its config, the others on the run's saved
config.json and on their own options).
"""

import math

from densenet_jax import checkpointing, data, errors, layers, models, optim

DTYPES = ("float32", "bfloat16")
# Known split sizes: `train` includes the validation images.
SPLIT_SIZES = {
  "cifar10": {"train": 50_000, "test": 10_000},
  "cifar100": {"train": 50_000, "test": 10_000},
  "synthetic": data.SYNTHETIC_SIZES,
}

_NAMES = {
  "model": tuple(models.PRESETS),
  "dtype": DTYPES,
  "impl": tuple(layers.IMPLS),
  "dataset": data.DATASETS,
  "optimizer": optim.OPTIMIZERS,
  "lr_schedule": optim.SCHEDULES,
  "weight_decay_mode": optim.WEIGHT_DECAY_MODES,
  "test_checkpoint": checkpointing.KINDS,
}
_POSITIVE_INTS = (
  "batch_size",
  "eval_batch_size",
  "num_epochs",
  "val_size",
  "log_every_steps",
)
_OPTIONAL_POSITIVE_INTS = ("steps_per_epoch", "train_size")
_NON_NEGATIVE_INTS = (
  "early_stopping_patience",
  "tta_translate_px",
  "test_every_epochs",
  "keep_every_epochs",
  "low_res_px",
  "low_res_epochs",
)
_BOOLS = (
  "nesterov",
  "weight_decay_kernels_only",
  "tta_flip",
  "validate_tta",
  "whiten_stem",
)
# name: (low, high, high included); low is always included.
_RANGES = {
  "adam_b1": (0.0, 1.0, False),
  "adam_b2": (0.0, 1.0, False),
  "momentum": (0.0, 1.0, False),
  "weight_decay": (0.0, math.inf, False),
  "bn_bias_lr_scale": (0.0, math.inf, False),
  "warmup_epochs": (0.0, math.inf, False),
  "final_lr_fraction": (0.0, 1.0, True),
  "label_smoothing": (0.0, 1.0, False),
  "ema_decay": (0.0, 1.0, False),
  "time_budget_minutes": (0.0, math.inf, False),
}
_AUGMENT_RANGES = {
  "rotation_range_deg": (0.0, 180.0, True),
  "width_shift_range": (0.0, 1.0, True),
  "height_shift_range": (0.0, 1.0, True),
  "shear_range_deg": (0.0, 90.0, False),
  "zoom_range": (0.0, 1.0, False),
}
_AUGMENT_INTS = ("crop_padding_px", "cutout_size_px")
_AUGMENT_BOOLS = ("enabled", "horizontal_flip", "alternating_flips")


def _fail(message: str):
  raise errors.UserError(message)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def name(key: str, value) -> None:
  """`value` must be one of the known names for `key` (model, dtype, ...)."""
  errors.check_choice(key, value, _NAMES[key])


def positive_int(key: str, value) -> None:
  if not _is_int(value) or value <= 0:
    _fail(f"{key}={value!r} must be a positive integer")


def in_range(key: str, value, low, high, high_included=False) -> None:
  """A finite number with low <= value < high (or <= high)."""
  if not _is_number(value) or not math.isfinite(value):
    _fail(f"{key}={value!r} must be a finite number")
  if value < low or value > high or (value == high and not high_included):
    upper = f"<= {high}" if high_included else f"< {high}"
    if high == math.inf:
      _fail(f"{key}={value!r} must be >= {low}")
    _fail(f"{key}={value!r} must be >= {low} and {upper}")


def config(cfg, check_sizes: bool = True) -> None:
  """Raises UserError naming the first field of `cfg` that cannot run.

  Fields absent from `cfg` (an older run's config.json) are skipped.
  `check_sizes=False` leaves out the split sizes (data given in memory)."""
  present = [k for k in _NAMES if k in cfg]
  for key in present:
    name(key, cfg[key])
  for key in _POSITIVE_INTS:
    if key in cfg:
      positive_int(key, cfg[key])
  for key in _OPTIONAL_POSITIVE_INTS:
    if cfg.get(key) is not None:
      positive_int(key, cfg[key])
  for key in _NON_NEGATIVE_INTS:
    if key in cfg and (not _is_int(cfg[key]) or cfg[key] < 0):
      _fail(f"{key}={cfg[key]!r} must be an integer >= 0")
  if "seed" in cfg and not _is_int(cfg.seed):
    _fail(f"seed={cfg.seed!r} must be an integer")
  for key in _BOOLS:
    if key in cfg and not isinstance(cfg[key], bool):
      _fail(f"{key}={cfg[key]!r} must be True or False")
  _optimizer(cfg)
  for key, bounds in _RANGES.items():
    if key in cfg:
      in_range(key, cfg[key], *bounds)
  if "augment" in cfg:
    _augment(cfg.augment)
  _low_res(cfg)
  if cfg.get("whiten_stem") and cfg.get("model") in models.PRESETS:
    model = models.PRESETS[cfg.model]()
    models.check_whitenable((3, 3, 3, model.stem_features))
  _time_budget(cfg)
  if cfg.get("data_dir") is not None and not isinstance(cfg.data_dir, str):
    _fail(f"data_dir={cfg.data_dir!r} must be a path")
  if check_sizes:
    split_sizes(cfg)


def _optimizer(cfg) -> None:
  if "learning_rate" in cfg:
    lr = cfg.learning_rate
    if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
      _fail(f"learning_rate={lr!r} must be a finite number > 0")
  if "adam_eps" in cfg:
    eps = cfg.adam_eps
    if not _is_number(eps) or not math.isfinite(eps) or eps <= 0:
      _fail(f"adam_eps={eps!r} must be a finite number > 0")
  if "lr_step_factor" in cfg:
    in_range("lr_step_factor", cfg.lr_step_factor, 0.0, math.inf)
  if "lr_step_fractions" in cfg:
    fractions = cfg.lr_step_fractions
    if not isinstance(fractions, (tuple, list)) or not all(
      _is_number(f) and 0 < f < 1 for f in fractions
    ):
      _fail(
        f"lr_step_fractions={fractions!r} must be fractions of the run, "
        "each > 0 and < 1"
      )
  optim.check_adam_fields(cfg)


def _low_res(cfg) -> None:
  px, epochs = cfg.get("low_res_px", 0), cfg.get("low_res_epochs", 0)
  if bool(px) != bool(epochs):
    _fail(
      f"low_res_px={px} and low_res_epochs={epochs} go together: both 0 "
      "(off) or both positive"
    )
  if not px or cfg.get("model") not in models.PRESETS:
    return
  factor = models.PRESETS[cfg.model]().downsampling
  if px % factor or px >= 32:
    _fail(  # 32: the side of every data set's images
      f"low_res_px={px} must be a multiple of {factor} below 32: model "
      f"{cfg.model} halves the image side {factor.bit_length() - 1} times"
    )


def _time_budget(cfg) -> None:
  if not cfg.get("time_budget_minutes"):
    return
  constant = cfg.get("lr_schedule") == "constant"
  if not constant and cfg.get("warmup_epochs", 0) < 1:
    _fail(
      f"time_budget_minutes={cfg.time_budget_minutes} needs warmup_epochs "
      f">= 1 (not {cfg.get('warmup_epochs', 0)}) with lr_schedule="
      f"{cfg.get('lr_schedule')!r}: the first epoch is timed to decide the "
      "run's length, so its learning rates must not depend on it"
    )


def _augment(aug) -> None:
  for key, bounds in _AUGMENT_RANGES.items():
    if key in aug:
      in_range(f"augment.{key}", aug[key], *bounds)
  for key in _AUGMENT_INTS:
    if key in aug and (not _is_int(aug[key]) or not 0 <= aug[key] < 32):
      _fail(f"augment.{key}={aug[key]!r} must be an integer from 0 to 31")
  for key in _AUGMENT_BOOLS:
    if key in aug and not isinstance(aug[key], bool):
      _fail(f"augment.{key}={aug[key]!r} must be True or False")
  if aug.get("alternating_flips") and not aug.get("horizontal_flip"):
    _fail("augment.alternating_flips=True needs augment.horizontal_flip=True")


def split_sizes(cfg) -> None:
  """val_size, train_size and the batch against the data set's known sizes
  (skipped for an .npz data dir, whose sizes only its file knows)."""
  dataset = cfg.get("dataset")
  if dataset not in SPLIT_SIZES or str(cfg.get("data_dir")).endswith(".npz"):
    return
  total = SPLIT_SIZES[dataset]["train"]
  val_size = cfg.get("val_size", 5000)
  if not 0 < val_size < total:
    _fail(
      f"val_size={val_size} must be between 1 and {total - 1} "
      f"(the {dataset} training set has {total} images)"
    )
  train_size = cfg.get("train_size")
  n_train = total - val_size if train_size is None else train_size
  if not 0 < n_train <= total - val_size:
    _fail(
      f"train_size={train_size} must be between 1 and "
      f"{total - val_size} with val_size={val_size} (the {dataset} "
      f"training set has {total} images)"
    )
  batch_size = cfg.get("batch_size", 1)
  if cfg.get("steps_per_epoch") is None and batch_size > n_train:
    _fail(
      f"batch_size={batch_size} is larger than the {n_train} training "
      f"images of {dataset}"
    )
