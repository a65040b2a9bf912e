"""The reference recipe, faithfully: the TF2/Keras tutorial (= `default`).

    python -m densenet_jax.train --config reference --workdir runs/reference

The tutorial's DenseNet (1,359,842 parameters), Adam with Keras' defaults at
a constant 1e-3, batch 128, Keras ImageDataGenerator augmentation (rotation
40 deg, shifts 0.2, shear 0.2 deg, zoom 0.2, flip), up to 200 epochs with
early stopping (patience 4 on training loss), the best-validation-loss
checkpoint scored on test.

The tutorial reports 90.07% test accuracy (96% train, 91.6% validation)
after over an hour on a GPU. Results of this code: the README's results
table (experiments/gpu_recipes.sh runs it on a GPU machine and records the
time to 90.07%).
"""

from densenet_jax.configs import default


def get_config():
  return default.get_config()
