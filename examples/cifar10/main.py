"""Trains airbench94 on CIFAR-10 with nag_optax.

  python examples/cifar10/main.py --workdir=runs/c10 \\
      --config=examples/cifar10/configs/cpu.py --config.data_dir=DIR

Any config field can be overridden on the command line
(`--config.num_epochs=5`). Rerunning with the same workdir resumes from its
newest intact checkpoint.

Exit status: 0 when the run ended (or stopped at `stop_after_steps`,
checkpointed); 2 for a usage or configuration error, found before any data
is read, one `error: <flag or field>: ...` line per problem; 1 for any
other error (no data, a workdir that cannot be written, ...); 130 when
interrupted by Ctrl-C (SIGINT), 143 by SIGTERM: during training, after
saving a checkpoint; either way one line saying how to resume.
"""

import difflib
import os
import shlex
import signal
import sys
import threading
import traceback


def _interrupted_while_starting(signum, frame):
  """SIGINT or SIGTERM while the modules load (seconds, nothing done yet):
  one line and out at once (a KeyboardInterrupt raised inside an import
  would print a traceback, or be lost inside a garbage-collector callback)."""
  del frame
  command = shlex.join(["python", *sys.argv])
  sys.stderr.write(
    f"error: interrupted by {signal.Signals(signum).name} while starting, nothing "
    f"done; run the same command again: {command}\n"
  )
  sys.stderr.flush()
  os._exit(128 + signum)


for _signum in (signal.SIGINT, signal.SIGTERM):
  signal.signal(_signum, _interrupted_while_starting)

from absl import app  # noqa: E402 (after the handlers)
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

try:
  import nag_optax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
  sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
  )

from configs import default as default_config  # noqa: E402 (ml_collections only)

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file(
  "config", None, "Training configuration file.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])

_REQUIRED = {
  "config": f"the configuration file, e.g. --config={PRESETS}/cpu.py",
  "workdir": "the folder for checkpoints, metrics and results, e.g. --workdir=runs/c10",
}


def _exit(code: int, problems=(), *, hard: bool = False) -> None:
  """Prints each problem as an `error: ...` line on stderr and exits.

  Orbax's background threads are not daemons, and after a failed save some
  of them wait minutes for signals that never come: the interpreter would
  wait for them before exiting. So with such a thread still alive, or
  `hard` (after a signal: XLA may still be compiling in its own threads,
  and tearing the interpreter down under them crashed it), the process ends
  with os._exit once its output is flushed (atexit handlers skipped: what
  the run opened is closed already).
  """
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  lingering = [
    t
    for t in threading.enumerate()
    if t is not threading.current_thread() and not t.daemon and t.is_alive()
  ]
  if lingering or hard:
    logging.flush()
    os._exit(code)
  sys.exit(code)


class _Stop:
  """SIGINT (Ctrl-C) and SIGTERM. Outside the training loop a signal stops
  the run at once (KeyboardInterrupt, wherever Python is); while the loop
  trains (`deferred`, set by train.py) it only records `signum`, and the
  loop finishes its step, saves a checkpoint and raises train.Interrupted.
  A second signal stops at once."""

  def __init__(self):
    self.signum = None
    self.deferred = False

  def install(self):
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    first = self.signum is None
    if first:
      self.signum = signum
    if not (self.deferred and first):
      raise KeyboardInterrupt


STOP = _Stop()


def _interrupted(step=None) -> None:
  """Exits 130 (SIGINT) or 143 (SIGTERM) with one line: what was saved and
  the command that resumes."""
  signum = STOP.signum or signal.SIGINT
  name = signal.Signals(signum).name
  command = shlex.join(["python", *sys.argv])
  checkpoints = os.path.join(FLAGS["workdir"].value or ".", "checkpoints")
  if step is not None:
    line = f" at step {step}, checkpoint saved in {checkpoints}; to resume"
  else:
    line = f"; to resume from the newest checkpoint in {checkpoints} (if any)"
  _exit(
    128 + signum,
    [f"interrupted by {name}{line}, run the same command: {command}"],
    hard=True,
  )


def _without_orbax_tracebacks(record) -> bool:
  """Keeps Orbax's log lines but not their tracebacks: a failed save logs
  the same one from each of its threads (hundreds of lines), and the run's
  `error:` line names the failure."""
  if f"{os.sep}orbax{os.sep}" in record.pathname:
    record.exc_info = record.exc_text = None
  return True


def _last_line(error: BaseException) -> str:
  """An exception's message as one line: its last non-empty line (where a
  traceback quoted in the message ends)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  line = lines[-1] if lines else type(error).__name__
  quoted = len(line) > 1 and line[0] == line[-1] and line[0] in "'\""
  return line[1:-1] if quoted else line


def _config_file(argv) -> str | None:
  """The file that `argv` gives to --config (the last one given, as absl
  takes), without its `:argument`."""
  path = None
  for i, arg in enumerate(argv[1:], 1):
    for flag in ("--config", "-config"):
      if arg.startswith(flag + "="):
        path = arg[len(flag) + 1 :]
      elif arg == flag and i + 1 < len(argv):
        path = argv[i + 1]
  return None if path is None else path.split(":", 1)[0]


def _unknown_fields(argv) -> list[str]:
  """A problem for each `--config.<name>` of `argv` that names no field."""
  fields = list(default_config.get_config())
  problems = []
  for arg in argv[1:]:
    if arg.startswith(("--config.", "-config.")):
      name = arg.split("config.", 1)[1].split("=", 1)[0]
      if name.split(".")[0] not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name}: unknown field{hint}; correct --config.{name}")
  return problems


def _parse_flags(argv):
  """absl's flag parsing, with its errors as `error: ...` lines, exit 2."""
  path = _config_file(argv)
  if path is not None and not os.path.isfile(path):
    _exit(
      2,
      [
        f"--config: no such file: {os.path.abspath(path)} (the presets are in "
        f"{PRESETS})"
      ],
    )
  try:
    return FLAGS(argv)
  except flags.Error as error:
    missing = [name for name in _REQUIRED if FLAGS[name].value is None]
    if missing:
      _exit(2, [f"--{name}: required: {_REQUIRED[name]}" for name in missing])
    _exit(2, [_last_line(error)])
  except Exception as error:  # noqa: BLE001 (a config file that fails, an unknown field)
    where = f"--config: {path}: " if path else ""
    _exit(2, _unknown_fields(argv) or [where + _last_line(error)])


def main(argv):
  if len(argv) > 1:
    _exit(
      2,
      [f"unexpected arguments {argv[1:]}: set fields as --config.<field>=<value>"],
    )
  try:
    config = FLAGS.config
  except OSError as error:  # the file is there but could not be read
    _exit(2, [f"--config: {_last_line(error)}"])
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  logging.get_absl_handler().addFilter(_without_orbax_tracebacks)
  # Importing starts no JAX backend: the XLA flags below still apply.
  import train

  problems = train.validate_config(config)
  if problems:
    _exit(2, problems)
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
  import jax

  problems = train.validate_config(config, len(jax.devices()))
  if problems:
    _exit(2, problems)
  if jax.process_index() == 0:
    overrides = [a for a in sys.argv[1:] if a.startswith(("--config.", "-config."))]
    for line in train.describe_run(
      config, FLAGS.workdir, _config_file(sys.argv), overrides
    ):
      print(line, flush=True)
  try:
    train.train_and_evaluate(config, FLAGS.workdir, stop=STOP)
  except train.ConfigError as error:
    _exit(2, error.problems)
  except (input_pipeline.DataError, train.WorkdirError) as error:
    _exit(1, [str(error)])
  except train.Interrupted as error:
    _interrupted(error.step)
  except KeyboardInterrupt:
    _interrupted()
  except Exception:  # noqa: BLE001 (shown whole, then the process ends)
    traceback.print_exc()
    _exit(1)
  _exit(0)


if __name__ == "__main__":
  STOP.install()
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # while the flags or the config file were read
    _interrupted()
