"""The reference recipe: the TF2/Keras tutorial's DenseNet on CIFAR-10.

    python -m densenet_jax.train --workdir runs/reference

Adam (Keras defaults), batch 128, 351 steps per epoch over the first 45,000
training images, the last 5,000 for validation, Keras ImageDataGenerator
augmentation, up to 200 epochs with early stopping (patience 4 on training
loss). The tutorial reports 90.07% test accuracy after over an hour on a GPU.
"""

import ml_collections
from ml_collections.config_dict import placeholder


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
  config.data_dir = placeholder(str)
  config.val_size = 5000  # the last val_size training images validate
  # None: all the rest; an int trains on fewer.
  config.train_size = placeholder(int)

  # Augmentation, in keras.preprocessing.image.ImageDataGenerator's units.
  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_range_deg = 40.0
  config.augment.width_shift_range = 0.2  # fraction of the width
  config.augment.height_shift_range = 0.2  # fraction of the height
  config.augment.shear_range_deg = 0.2  # Keras' shear_range is in degrees
  config.augment.zoom_range = 0.2  # zoom factors drawn from [0.8, 1.2]
  config.augment.horizontal_flip = True
  # Beyond the tutorial (0: off): random crop of the image zero-padded by
  # this many pixels per side, and a cutout square of this side, in pixels.
  config.augment.crop_padding_px = 0
  config.augment.cutout_size_px = 0
  # Each image flipped in every other epoch (from a random first epoch)
  # rather than at random in each; only with horizontal_flip.
  config.augment.alternating_flips = False

  # Optimisation: Adam with Keras' defaults (see densenet_jax/optim.py).
  config.optimizer = "adam"  # adam, sgd or muon (sgd, conv kernels by Muon)
  config.learning_rate = 1e-3  # the peak, with a schedule
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-7
  config.momentum = 0.9  # sgd, muon
  config.nesterov = True  # sgd, muon
  # Weight decay (sgd, muon): "l2" adds weight_decay * p to the gradient,
  # "decoupled" subtracts learning_rate * weight_decay * p from p.
  config.weight_decay = 0.0
  config.weight_decay_mode = "l2"
  config.weight_decay_kernels_only = True  # spare BatchNorm and biases
  config.bn_bias_lr_scale = 1.0  # sgd, muon: BatchNorm offsets' step factor
  # Schedule: constant, step, cosine or onecycle, after a linear warm-up.
  config.lr_schedule = "constant"
  config.warmup_epochs = 0.0
  config.lr_step_fractions = (0.5, 0.75)  # step: where, in fractions of run
  config.lr_step_factor = 0.1  # step: the factor at each of them
  config.final_lr_fraction = 0.0  # cosine, onecycle: the last learning rate
  config.label_smoothing = 0.0  # training loss only; 0: off
  # Exponential moving average of the weights and BatchNorm statistics,
  # used for validation and test; 0: off. The decay is warmed up as
  # min(ema_decay, (1 + step) / (10 + step)).
  config.ema_decay = 0.0
  # The stem kernel whitens the training images' 3x3 patches and stays as
  # initialised (airbench's first layer; models.whitening_kernel).
  config.whiten_stem = False
  config.tta_flip = False  # eval on the mean logits of image and its mirror
  # Eval also on the image moved this many pixels each way diagonally
  # (models.TTA); 0: off.
  config.tta_translate_px = 0
  # Validation averages the test's views; False: the image alone, at a
  # view's cost, where validation chooses nothing (test_checkpoint latest).
  config.validate_tta = True
  # Progressive resizing: the first low_res_epochs epochs train on the
  # augmented images scaled down to low_res_px square (0, 0: off).
  config.low_res_px = 0
  config.low_res_epochs = 0
  config.batch_size = 128  # global batch, split over all devices
  config.eval_batch_size = 500
  config.num_epochs = 200
  # None: floor(train images / batch_size) = 351.
  config.steps_per_epoch = placeholder(int)
  # Epochs without a lower training loss before stopping; 0: never stop.
  config.early_stopping_patience = 4
  # Minutes the whole run may take (0: off). After the first epoch, timed,
  # and again after each further low-res one, num_epochs becomes as many
  # epochs as fit, low_res_epochs keeping its share of them; corrected after
  # each full-size epoch (densenet_jax.budget); needs warmup_epochs >= 1
  # unless the learning rate is constant.
  config.time_budget_minutes = 0.0

  # The checkpoint scored on test at the end (and by evaluate and predict
  # unless told otherwise): "best", the lowest validation loss (the
  # tutorial's save-on-improvement), or "latest", the last epoch's state
  # (for a schedule that ends its learning rate at zero, where the last
  # epochs' validation losses differ by noise).
  config.test_checkpoint = "best"

  # Bookkeeping.
  # Also score the test set after every Nth epoch and the last one (a
  # learning curve of test accuracy against wall time; model selection
  # still uses validation); 0: only the best checkpoint, at the end.
  config.test_every_epochs = 0
  # Keep the latest checkpoint of every Nth epoch (0: only the newest), for
  # `python -m densenet_jax.evaluate --kept` to score after training: the
  # same curve as test_every_epochs, without its time in the run's.
  config.keep_every_epochs = 0
  config.seed = 0
  config.log_every_steps = 10  # progress-bar refresh (each one syncs the host)
  return config
