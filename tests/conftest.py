"""Shared fixtures: tiny synthetic CIFAR-shaped data and the smoke config."""

import numpy as np
import pytest

from densenet_jax import configs, data


def synthetic_dataset(train=128, val=64, test=100, seed=0, num_classes=10):
  """Random images whose label is learnable: brightness encodes the class."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = (labels * (255 // num_classes))[:, None, None, None]
    noise = rng.integers(0, 20, (n, 32, 32, 3))
    return data.Split(np.clip(base + noise, 0, 255).astype(np.uint8), labels)

  return data.Dataset(
    "cifar10",
    {"train": split(train), "validation": split(val), "test": split(test)},
    [f"class{i}" for i in range(num_classes)],
  )


@pytest.fixture(scope="session")
def dataset():
  return synthetic_dataset()


@pytest.fixture
def smoke_config():
  return configs.load("smoke")
