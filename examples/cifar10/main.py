"""Trains airbench94 on CIFAR-10 with nag_optax.

  python examples/cifar10/main.py --workdir=runs/c10 \\
      --config=examples/cifar10/configs/cpu.py --config.data_dir=DIR

Any config field can be overridden on the command line
(`--config.num_epochs=5`). Rerunning with the same workdir resumes from its
latest checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

try:
  import nag_optax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
  sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
  )

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file(
  "config", None, "Training configuration file.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  config = FLAGS.config
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  xla_flags = [config.xla_flags]
  if config.cpu_devices:
    xla_flags.append(f"--xla_force_host_platform_device_count={config.cpu_devices}")
  if config.deterministic:
    xla_flags.append("--xla_gpu_deterministic_ops=true")
  # XLA reads its flags when the backend starts: before JAX is used.
  os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), *xla_flags]
  ).strip()

  from nag_optax import parallel

  parallel.initialize()  # joins a `python -m nag_optax launch` run, else no-op
  import input_pipeline
  import train

  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except input_pipeline.DataError as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
