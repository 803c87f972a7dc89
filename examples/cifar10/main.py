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
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if config.deterministic:  # must reach XLA before the backend starts
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"
    ).strip()

  from nag_optax import parallel

  parallel.initialize()  # joins a `python -m nag_optax launch` run, else no-op
  import train  # imports JAX-using modules after the flags are set

  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
