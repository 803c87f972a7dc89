"""The GPU recipe: airbench94 (Jordan, 2024) with nag_optax.nesterov.

94% mean test accuracy with 6-view TTA is airbench94's result on one modern
GPU; every value below is airbench94's unless its comment says otherwise.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # ---- Data.
  # Folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (the
  # official "python version"); downloaded there when neither exists.
  config.data_dir = "./data"
  # Download the official archive when data_dir has no CIFAR-10.
  config.download = True
  # Hold out the last N training images and evaluate on them instead of the
  # test set (0: train on all 50,000 and evaluate on the test set). Tune
  # hyperparameters with this, never on the test set.
  config.validation_images = 0
  # Use only the first N training / evaluation images (0: all). For quick
  # runs and tests.
  config.train_subset = 0
  config.eval_subset = 0
  # Reflect-padding of the random-crop ("translate") augmentation, pixels.
  config.crop_padding = 2
  # Alternating flip: a random half mirrored in epoch 0, then every image
  # flips orientation each epoch (False: an independent coin every epoch).
  config.alternating_flip = True

  # ---- Model.
  # Channels of airbench94's three conv groups.
  config.widths = (64, 256, 256)
  # BatchNorm momentum: weight of the OLD running value (PyTorch's 0.4).
  config.bn_momentum = 0.6
  # Logits are multiplied by this (airbench's Mul(1/9)).
  config.scaling_factor = 1 / 9
  # Compute dtype of the convolutions: "bfloat16" on GPU (airbench runs in
  # fp16); parameters, optimizer state and BatchNorm stay float32.
  config.compute_dtype = "bfloat16"
  # Images used to estimate the whitening filters' patch covariance.
  config.whiten_images = 5000
  # The whitening layer's eigenvalue regulariser.
  config.whiten_eps = 5e-4

  # ---- Optimisation (learning rate and weight decay per 1024 examples,
  # divided by 1024 * (1 + 1/(1 - momentum)) in train.py).
  # Global batch per optimizer step (drop last: 48 steps per epoch).
  config.batch_size = 1024
  # Training length in epochs (fractional: stops mid-epoch). 476 steps.
  config.num_epochs = 9.9
  # Learning rate per 1024 examples (11.5 -> 1.4648e-3 per step).
  config.learning_rate = 11.5
  # Nesterov momentum.
  config.momentum = 0.85
  # Weight decay per 1024 examples, applied as coupled L2 whose coefficient
  # is weight_decay / lr, so the decay per step follows the lr schedule.
  config.weight_decay = 0.0153
  # BatchNorm biases get this many times the learning rate (same decay).
  config.bias_scaler = 64.0
  # The schedule: linear warm-up from warmup_from to 1 over the first
  # warmup_fraction of the steps, then linear down to final_lr_factor.
  config.warmup_fraction = 0.23
  config.warmup_from = 0.2
  config.final_lr_factor = 0.07
  # Label smoothing of the cross-entropy (summed over the batch).
  config.label_smoothing = 0.2
  # Epochs during which the whitening layer's bias trains (then frozen).
  config.whiten_bias_epochs = 3
  # Weight averaging every this many steps (0: off; airbench's
  # "lookahead"): ema <- d * ema + (1 - d) * net, net <- ema, with
  # d = ema_decay**ema_every * (step / total_steps)**3.
  config.ema_every = 5
  config.ema_decay = 0.95
  # Micro-batches per optimizer step, for devices that cannot hold the
  # batch: each device's slice of the batch is split into this many inside
  # the compiled step (jit_data_parallel's micro_batches), their gradients
  # summed, and reduced across devices once. BatchNorm then sees each
  # micro-batch. batch_size must be a multiple of devices x accum_steps.
  config.accum_steps = 1

  # ---- Devices.
  # Data-parallel devices (0: all of them).
  config.num_devices = 0
  # Split the optimizer state over the devices (ZeRO-1).
  config.zero1 = False
  # On a CPU: present it to JAX as this many devices, so that data
  # parallelism over them keeps every core busy (0: JAX's default, one
  # device, whose kernels leave cores idle much of the time). Ignored on
  # GPUs and TPUs.
  config.cpu_devices = 0
  # Extra XLA flags, set before JAX starts.
  config.xla_flags = ""

  # ---- Evaluation.
  # Test-time augmentation: 0 none, 1 mirror, 2 mirror + two 1-px shifts
  # (6 views).
  config.tta_level = 2
  # Images per evaluation call.
  config.eval_batch_size = 2000
  # Evaluate (without TTA) after every this many epochs (0: only at the end).
  config.eval_every_epochs = 1

  # ---- Run.
  # Seed of the initialisation, the data order and the augmentation.
  config.seed = 0
  # Deterministic GPU kernels (XLA --xla_gpu_deterministic_ops): resumed
  # runs then end with the same parameters as uninterrupted ones.
  config.deterministic = False
  # Orbax checkpoint every this many optimizer steps (0: only at the end).
  config.checkpoint_every_steps = 0
  # Also a checkpoint once this many seconds have passed since the last one
  # (checked after each step; 0: off), so that a run stopped in its first
  # minutes resumes where it was.
  config.checkpoint_every_seconds = 300.0
  # Checkpoints kept.
  config.checkpoints_to_keep = 2
  # Stop (with a checkpoint) after this many optimizer steps in this
  # process, to be resumed later (0: run to the end).
  config.stop_after_steps = 0
  # Written to a file or a pipe, the progress line (step, epoch, images/s,
  # loss, ETA) is printed once this many seconds have passed, at the end of
  # the step then running (so a line comes at most a step later); on a
  # terminal it is redrawn in place.
  config.progress_every_seconds = 20.0
  # Plot curves.png from metrics.jsonl at the end.
  config.plot = True
  # Also write TensorBoard event files to <workdir>/tensorboard (needs
  # tensorboardX).
  config.tensorboard = False
  return config
