"""Shared fixtures: tiny synthetic CIFAR-shaped data and the smoke config."""

import pytest

from densenet_jax import configs, data


def synthetic_dataset(train=128, val=64, test=100, num_classes=10):
  """Tiny learnable data in CIFAR's shapes (see data.synthetic_split)."""
  return data.Dataset(
    "cifar10",
    {
      "train": data.synthetic_split(train, num_classes, seed=0),
      "validation": data.synthetic_split(val, num_classes, seed=1),
      "test": data.synthetic_split(test, num_classes, seed=2),
    },
    [f"class{i}" for i in range(num_classes)],
  )


@pytest.fixture(scope="session")
def dataset():
  return synthetic_dataset()


@pytest.fixture
def smoke_config():
  return configs.load("smoke")
