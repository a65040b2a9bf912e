"""DenseNet for CIFAR in JAX/Flax. `densenet_jax.load(workdir)` returns a
trained model (see densenet_jax.inference); the commands are
`python -m densenet_jax.{train,evaluate,predict,show,summary}`."""


def __getattr__(name):
  # Lazy: `python -m densenet_jax.train` need not import the inference code.
  if name == "load":
    from densenet_jax.inference import load

    return load
  raise AttributeError(f"module 'densenet_jax' has no attribute {name!r}")
