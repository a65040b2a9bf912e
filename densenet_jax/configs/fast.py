"""The fastest route to >= 94% we could assemble: DenseNet-BC-100-k12 with
the tricks of fast CIFAR trainers, each an option of the config.

    python -m densenet_jax.train --config fast --workdir runs/fast

Versus `paper` (300 epochs, step schedule): 40 epochs of batch 256; SGD with
Nesterov momentum 0.9, 2 epochs of linear warm-up to 0.4 (the paper's 0.1
at batch 64, scaled linearly) then cosine decay to 0; decoupled weight decay
2.5e-3 (lr-scaled, ~ the paper's 2.5e-4 coupled) on conv and dense kernels
only; label smoothing 0.1; random crop (4-pixel zero padding), flip and an
8-pixel cutout, all on device; bfloat16 computation; an EMA of the weights
and BatchNorm statistics (decay 0.999) for validation and test; test-time
flip averaging. No early stopping.

Results: the README's results table (experiments/gpu_recipes.sh runs it on
a GPU machine and records the time to 90.07% and the best test accuracy).
The hyperparameters are educated guesses, not tuned on a GPU.
"""

from densenet_jax.configs import paper


def get_config():
  config = paper.get_config()
  config.dtype = "bfloat16"
  config.augment.cutout_size_px = 8

  config.batch_size = 256
  config.eval_batch_size = 1000
  config.num_epochs = 40
  config.learning_rate = 0.4  # the peak
  config.lr_schedule = "cosine"
  config.warmup_epochs = 2.0
  config.final_lr_fraction = 0.0
  config.weight_decay = 2.5e-3
  config.weight_decay_mode = "decoupled"
  config.weight_decay_kernels_only = True
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.tta_flip = True
  config.log_every_steps = 50
  return config
