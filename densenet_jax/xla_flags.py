"""XLA flags that make the DenseNet faster on CPU, set before JAX starts.

jaxlib 0.10 hands convolutions on CPU to YNNPACK by default; for this
network Eigen's convolutions (XLA's previous default) train about 1.2x and
evaluate about 1.5x faster on the 2-core x86 machine of experiments/README.md.
XLA aborts the process on a flag it does not know, and these flags are
experimental, so they are only added for the jaxlib versions they were
measured with; GPU runs ignore them.
"""

import importlib.metadata
import os

CPU_FLAGS = {
  # Keep dots and reductions in YNNPACK, convolutions in Eigen.
  "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
}
TESTED_JAXLIB = ("0.10.",)


def defaults() -> dict:
  """CPU_FLAGS if this jaxlib is one they were measured with, else {}."""
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return {}
  return dict(CPU_FLAGS) if version.startswith(TESTED_JAXLIB) else {}


def add_flags(flags: dict, environ=os.environ) -> dict:
  """Adds those of `flags` the user has not set to XLA_FLAGS; returns them.

  Takes effect only before JAX initialises its CPU backend (the first
  computation)."""
  current = environ.get("XLA_FLAGS", "")
  added = {k: v for k, v in flags.items() if f"--{k}=" not in current}
  if added:
    extra = " ".join(f"--{k}={v}" for k, v in added.items())
    environ["XLA_FLAGS"] = f"{current} {extra}".strip()
  return added


def apply_defaults(environ=os.environ) -> dict:
  """Adds the default flags the user has not set to XLA_FLAGS; returns them.
  Entry points call it first thing (see add_flags)."""
  return add_flags(defaults(), environ)
