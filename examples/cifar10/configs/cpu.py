"""The preset for a 2-core CPU: airbench94 at half width, 8 epochs.

Values not set here are the GPU recipe's (configs/default.py); the choices
were made on a held-out validation split of the training set (README.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.compute_dtype = "float32"  # bfloat16 convolutions are no faster on CPU.
  config.widths = (32, 128, 128)  # Half width: about 1/4 of the FLOPs.
  config.batch_size = 256  # More, smaller steps in the same time.
  config.cpu_devices = 2  # One device per core, data parallel over both.
  config.num_epochs = 8
  config.whiten_bias_epochs = 2  # A quarter of the run (airbench: 3 of 9.9).
  config.eval_every_epochs = 0  # Evaluate (with TTA) at the end only.
  config.checkpoint_every_steps = 200
  return config
