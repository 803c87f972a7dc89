"""The TPU preset: the GPU recipe (configs/default.py) on a TPU slice, sized
for the 16 chips of a v5e 4x4 slice (and any slice of 1, 2, 4, 8 or 16).

Values not set here are the GPU recipe's: batch 1024 (64 images per chip on
16 chips), 9.9 epochs, no accumulation.
"""

from configs import default


def get_config():
  config = default.get_config()
  # bfloat16 convolutions: the TPU matrix units' native input type (float32
  # matrix products run as several bfloat16 passes). Set here so that the
  # preset keeps it whatever the GPU recipe chooses; parameters, optimizer
  # state, BatchNorm and the gradient reduction stay float32.
  config.compute_dtype = "bfloat16"
  # A multiple of 16 chips (the GPU recipe's 2000 is not): 128 images per
  # chip per evaluation call, the 10,000 test images in 5 calls.
  config.eval_batch_size = 2048
  return config
