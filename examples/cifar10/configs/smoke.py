"""Seconds on a CPU, for tests: a narrow airbench94 on part of CIFAR-10."""

from configs import default


def get_config():
  config = default.get_config()
  config.compute_dtype = "float32"
  config.widths = (16, 32, 32)
  config.train_subset = 8192
  config.test_subset = 2_000
  config.batch_size = 256
  config.num_epochs = 1.5  # 48 steps
  config.whiten_images = 1000
  config.whiten_bias_epochs = 1
  config.eval_every_epochs = 1
  config.eval_batch_size = 1000
  config.progress_bar = False
  config.plot = False
  return config
