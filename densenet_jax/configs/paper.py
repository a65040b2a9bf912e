"""The DenseNet paper's CIFAR-10+ recipe for DenseNet-BC (L=100, k=12).

    python -m densenet_jax.train --config paper --workdir runs/paper

Huang et al. (2017), section 4.2: SGD with Nesterov momentum 0.9, batch 64,
300 epochs, learning rate 0.1 divided by 10 at 50% and 75% of training,
weight decay 1e-4 (coupled, on every parameter, as in the authors' Torch
code), random crops of the 4-pixel zero-padded image and horizontal flips,
no early stopping. The paper reports 4.51% error (95.49% accuracy) for
DenseNet-BC-100-k12 on C10+ (769,162 parameters here).

Where this differs from the paper: it trains on 45,000 images and keeps the
last 5,000 for validation (the paper trains on all 50,000 and reports the
final model; here the best-validation-loss checkpoint is scored); inputs are
scaled to [0, 1] rather than normalised per channel; BatchNorm keeps the
tutorial's Keras settings (moving-average momentum 0.99, epsilon 1.001e-5;
Torch: 0.9 and 1e-5); the CIFAR-10 copy here is JPEG-compressed.

Results: the README's results table (a GPU run: 300 epochs of 703 steps).
"""

from densenet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = "densenet_bc_100_k12"
  # Crop (4-pixel zero padding) and flip; none of the tutorial's affine.
  for name in ("rotation_range_deg", "width_shift_range", "height_shift_range"):
    config.augment[name] = 0.0
  config.augment.shear_range_deg = 0.0
  config.augment.zoom_range = 0.0
  config.augment.horizontal_flip = True
  config.augment.crop_padding_px = 4

  config.optimizer = "sgd"
  config.momentum = 0.9
  config.nesterov = True
  config.learning_rate = 0.1
  config.lr_schedule = "step"
  config.lr_step_fractions = (0.5, 0.75)
  config.lr_step_factor = 0.1
  config.weight_decay = 1e-4
  config.weight_decay_mode = "l2"
  config.weight_decay_kernels_only = False
  config.batch_size = 64
  config.num_epochs = 300
  config.early_stopping_patience = 0  # off
  return config
