"""A seconds-long run of the whole pipeline, for tests and first checks.

python -m densenet_jax.train --config smoke --workdir /tmp/smoke
"""

from densenet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = "tiny"
  config.val_size = 64
  config.train_size = 128
  config.batch_size = 32
  config.eval_batch_size = 48
  config.num_epochs = 2
  config.log_every_steps = 1
  return config
