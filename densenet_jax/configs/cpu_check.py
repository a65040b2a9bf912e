"""A learning check on a CPU: real CIFAR-10 in about 10 minutes on 2 cores.

    python -m densenet_jax.train --config cpu_check --workdir runs/cpu_check

The `cpu_small` DenseNet (234,242 parameters, 38 MFLOPs per image: dense
layers at 16x16 and below only), 5 epochs of 382 steps of batch 128 over
49,000 training images (1,000 validate), SGD with Nesterov momentum, a
one-cycle schedule (half an epoch of warm-up to 0.2, linear decay to 0),
decoupled weight decay 5e-3 on kernels, label smoothing 0.1, flips only,
flip test-time augmentation; the test set is scored after every epoch, for
the curve of test accuracy against wall time (curves.png, third panel).

Results, with the commit and the machine that produced them: the README's
results table and experiments/results/cpu_check/.
"""

from densenet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = "cpu_small"
  for name in ("rotation_range_deg", "width_shift_range", "height_shift_range"):
    config.augment[name] = 0.0
  config.augment.shear_range_deg = 0.0
  config.augment.zoom_range = 0.0
  config.augment.horizontal_flip = True
  config.augment.crop_padding_px = 0
  config.val_size = 1000  # 49,000 training images

  config.optimizer = "sgd"
  config.momentum = 0.9
  config.nesterov = True
  config.learning_rate = 0.2
  config.lr_schedule = "onecycle"
  config.warmup_epochs = 0.5
  config.weight_decay = 5e-3
  config.weight_decay_mode = "decoupled"
  config.label_smoothing = 0.1
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 5
  config.early_stopping_patience = 0
  config.tta_flip = True
  config.test_every_epochs = 1
  config.log_every_steps = 50
  return config
