"""The reference recipe: the TF2/Keras tutorial's DenseNet on CIFAR-10.

    python -m densenet_jax.train --workdir runs/reference

Adam (Keras defaults), batch 128, 351 steps per epoch over the first 45,000
training images, the last 5,000 for validation, Keras ImageDataGenerator
augmentation, up to 200 epochs with early stopping (patience 4 on training
loss). The tutorial reports 90.07% test accuracy after over an hour on a GPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model.
  config.model = "reference"  # a preset of densenet_jax.models.PRESETS
  config.dtype = "float32"  # computation dtype: float32 or bfloat16
  # Layer implementation, same math and checkpoints: "fast" (CPU-tuned
  # densenet_jax.layers) or "flax" (plain flax layers).
  config.impl = "fast"

  # Data.
  config.dataset = "cifar10"  # a TFDS name: cifar10 or cifar100
  # TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data_dir = None
  config.val_size = 5000  # the last val_size training images validate
  config.train_size = None  # None: all the rest; an int trains on fewer

  # Augmentation, in keras.preprocessing.image.ImageDataGenerator's units.
  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_range_deg = 40.0
  config.augment.width_shift_range = 0.2  # fraction of the width
  config.augment.height_shift_range = 0.2  # fraction of the height
  config.augment.shear_range_deg = 0.2  # Keras' shear_range is in degrees
  config.augment.zoom_range = 0.2  # zoom factors drawn from [0.8, 1.2]
  config.augment.horizontal_flip = True

  # Optimisation: Adam with Keras' defaults.
  config.learning_rate = 1e-3
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-7
  config.batch_size = 128  # global batch, split over all devices
  config.eval_batch_size = 500
  config.num_epochs = 200
  config.steps_per_epoch = None  # None: floor(train images / batch_size) = 351
  # Epochs without a lower training loss before stopping; 0: never stop.
  config.early_stopping_patience = 4

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 10  # progress-bar refresh (each one syncs the host)
  return config
