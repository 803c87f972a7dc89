"""A preset for a 2-core CPU: >= 85% test accuracy with TTA in <= 15 minutes.

airbench94's recipe at reduced width and length; values not set here are
the GPU recipe's (configs/default.py).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.compute_dtype = "float32"  # bfloat16 convolutions are slow on CPU.
  config.widths = (32, 128, 128)  # Half width: ~0.25x the FLOPs.
  config.batch_size = 512  # More steps per epoch; hyperparameters are per example.
  config.num_epochs = 3.0
  config.eval_every_epochs = 0  # Test (with TTA) at the end only: saves time.
  config.checkpoint_every_steps = 100
  return config
