"""Weights of the TF2/Keras tutorial's model as a densenet_jax workdir.

    python -m densenet_jax.import_keras model.h5 --workdir runs/from_keras

reads a file written by the tutorial's `model.save_weights("model.h5")`
(tf.keras' HDF5 format; a whole model saved with `model.save("model.h5")`
does too) and writes WORKDIR/config.json (the `reference` config) and a
`best` checkpoint holding those weights, so that `evaluate`, `predict`,
`summary` and `densenet_jax.load` read it as a run trained here.

The file is read with h5py, without TensorFlow. Its layers are matched to
the network's in the order of the file's `layer_names` (the model's layer
order), by kind and shape, not by Keras' generated names: Conv2D kernels
(HWIO in both) and biases, BatchNormalization gamma, beta, moving mean and
variance (flax params scale and bias, batch_stats mean and var), and the
Dense classifier. A file of another network is refused, naming its first
layer that does not fit, before anything is written. The file holds no
layer settings: that its BatchNorm epsilons and pooling are the tutorial's
is assumed, as the architecture is.
"""

import dataclasses
import hashlib
import pathlib

import numpy as np

from densenet_jax import (
  checkpointing,
  cli,
  configs,
  errors,
  models,
  steps,
)

PRESET = "reference"
NUM_CLASSES = 10  # the tutorial's CIFAR-10 classifier
# Each kind of layer by the names of its Keras weights, and the flax
# collection and name each weight goes to.
KINDS = {
  "Conv2D": {"kernel": ("params", "kernel"), "bias": ("params", "bias")},
  "BatchNormalization": {
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
  },
  "Dense": {"kernel": ("params", "kernel"), "bias": ("params", "bias")},
}


class KerasWeightsError(errors.UserError):
  """A weights file that cannot be read or is not of the expected network."""


@dataclasses.dataclass
class KerasLayer:
  """One layer with weights of a Keras weights file."""

  name: str
  weights: dict  # Keras weight name ("kernel", "gamma", ...) -> array

  @property
  def kind(self) -> str:
    """Conv2D, BatchNormalization or Dense by its weights; '?' otherwise."""
    names = set(self.weights)
    if names == set(KINDS["BatchNormalization"]):
      return "BatchNormalization"
    kernel = self.weights.get("kernel")
    if kernel is not None and names <= {"kernel", "bias"}:
      return {4: "Conv2D", 2: "Dense"}.get(kernel.ndim, "?")
    return "?"

  def describe(self) -> str:
    shapes = ", ".join(f"{k} {v.shape}" for k, v in self.weights.items())
    return f"{self.kind}: {shapes}"


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def read_h5(path) -> list[KerasLayer]:
  """The layers with weights of a tf.keras HDF5 weights (or model) file, in
  the order of its `layer_names`."""
  import h5py

  path = pathlib.Path(path)
  if not path.is_file():
    raise KerasWeightsError(f"{path} does not exist or is not a file")
  try:
    f = h5py.File(path, "r")
  except OSError as err:
    raise KerasWeightsError(f"cannot read {path} as HDF5: {err}") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise KerasWeightsError(
        f"{path} is not a tf.keras weights file (it has no layer_names "
        "attribute): write one with model.save_weights('model.h5')"
      )
    layers = []
    for name in map(_text, root.attrs["layer_names"]):
      group = root[name]
      weights = {}
      for weight in map(_text, group.attrs.get("weight_names", [])):
        # "conv2d_3/kernel:0" -> "kernel"
        weights[weight.rpartition("/")[2].partition(":")[0]] = np.asarray(
          group[weight]
        )
      if weights:
        layers.append(KerasLayer(name, weights))
  return layers


def layer_plan(module) -> list[tuple[str, str]]:
  """(Keras kind, flax module path) of every layer with weights of a
  DenseNet, in the order Keras builds the tutorial's model."""
  plan = [("Conv2D", "stem_conv")]
  if module.stem_bn:
    plan.append(("BatchNormalization", "stem_bn"))
  for b, num_layers in enumerate(module.blocks):
    for i in range(num_layers):
      prefix = f"block{b}/layer{i}"
      if module.bottleneck_width:
        plan += [("BatchNormalization", f"{prefix}/bn1")]
        plan += [("Conv2D", f"{prefix}/conv1")]
      plan += [("BatchNormalization", f"{prefix}/bn2")]
      plan += [("Conv2D", f"{prefix}/conv2")]
    if b < len(module.blocks) - 1 or module.transition_after_last:
      plan += [("BatchNormalization", f"transition{b}/bn")]
      plan += [("Conv2D", f"transition{b}/conv")]
  return plan + [("BatchNormalization", "final_bn"), ("Dense", "classifier")]


def _expected(shapes: dict, kind: str, path: str) -> dict:
  """{Keras weight name: shape} that the flax layer at `path` holds."""
  out = {}
  for keras_name, (collection, name) in KINDS[kind].items():
    node = shapes[collection]
    for part in path.split("/"):
      node = node.get(part, {})
    if name in node:
      out[keras_name] = tuple(node[name].shape)
  return out


def to_variables(layers: list[KerasLayer], module, source: str = "the file"):
  """{"params", "batch_stats"} of `module` (a DenseNet) from Keras layers;
  KerasWeightsError names the first layer that does not fit."""
  shapes = models.variable_shapes(module)
  plan = layer_plan(module)
  what = f"the {PRESET!r} network"
  variables = {"params": {}, "batch_stats": {}}
  for n, (kind, path) in enumerate(plan):
    if n == len(layers):
      raise KerasWeightsError(
        f"{source} ends after {n} layers with weights; {what} has "
        f"{len(plan)} (the next would be {path}, a {kind})"
      )
    layer = layers[n]
    want = _expected(shapes, kind, path)
    have = {k: tuple(v.shape) for k, v in layer.weights.items()}
    if layer.kind != kind or have != want:
      expected = ", ".join(f"{k} {v}" for k, v in want.items())
      raise KerasWeightsError(
        f"{source} is not {what}: its layer {n + 1} with weights, "
        f"{layer.name!r} ({layer.describe()}), does not fit {path} "
        f"({kind}: {expected})"
      )
    for keras_name, array in layer.weights.items():
      collection, name = KINDS[kind][keras_name]
      node = variables[collection]
      for part in path.split("/"):
        node = node.setdefault(part, {})
      node[name] = np.asarray(array, np.float32)
  if len(layers) > len(plan):
    extra = layers[len(plan)]
    raise KerasWeightsError(
      f"{source} is not {what}: it has {len(layers)} layers with weights, "
      f"{len(plan)} expected; the first extra one is {extra.name!r} "
      f"({extra.describe()})"
    )
  return variables


def load_h5(path, module):
  """The variables of `module` read from a tf.keras weights file."""
  return to_variables(read_h5(path), module, source=str(path))


def _check_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise errors.UserError(
      f"workdir {workdir} exists and is not empty; choose a new --workdir"
    )


def import_weights(h5_path, workdir) -> pathlib.Path:
  """Writes WORKDIR/config.json and a `best` checkpoint from a tf.keras
  weights file of the tutorial's network; returns the checkpoint folder."""
  h5_path, workdir = pathlib.Path(h5_path), pathlib.Path(workdir)
  _check_workdir(workdir)
  config = configs.load(PRESET)
  model = models.from_config(config, NUM_CLASSES)
  variables = load_h5(h5_path, model)  # fails before anything is written
  state = steps.state_with_variables(config, model, variables)
  meta = {
    "history": [],
    "imported_from": {
      "path": str(h5_path.absolute()),
      "sha256": hashlib.sha256(h5_path.read_bytes()).hexdigest(),
    },
  }
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  ckpt = checkpointing.Checkpoints(workdir)
  ckpt.save("best", state, meta)
  ckpt.wait()
  ckpt.close()
  return workdir.absolute() / "checkpoints" / "best" / str(int(state.step))


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.import_keras",
    description="Turn the Keras tutorial's model.h5 (model.save_weights) "
    "into a densenet_jax workdir with a 'best' checkpoint.",
  )
  parser.add_argument("weights", help="the tf.keras HDF5 weights file")
  parser.add_argument(
    "--workdir", required=True, help="a new (or empty) folder to write"
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  path = import_weights(args.weights, args.workdir)
  print(f"wrote {pathlib.Path(args.workdir) / 'config.json'} and {path}")
  print(
    f"evaluate with: python -m densenet_jax.evaluate --workdir {args.workdir}"
  )
  return path


if __name__ == "__main__":
  main()
