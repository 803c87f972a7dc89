"""Seconds on a CPU, for tests and smoke runs: a narrow airbench94 on part
of the data."""

from configs import default


def get_config():
  config = default.get_config()
  config.compute_dtype = "float32"
  config.widths = (16, 32, 32)
  config.train_subset = 2048
  config.eval_subset = 512
  config.batch_size = 256
  config.num_epochs = 1.5  # 12 steps
  config.whiten_images = 512
  config.whiten_bias_epochs = 1
  config.eval_every_epochs = 1
  config.eval_batch_size = 256
  config.plot = False
  return config
