"""Multi-process start-up: joining a ``jax.distributed`` run, and a local
launcher of N processes x M CPU devices on 127.0.0.1.

The launcher picks a free loopback port and starts the processes with the
coordinator address, their id and their device count in environment
variables; each process calls :func:`initialize`, which reads them. The
launcher itself starts no JAX runtime. It leaves nothing behind: a signal
sent to it, a failed process or the time limit ends every process (a
signal, then SIGKILL after a grace period), and it waits for each one.
"""

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from collections.abc import Sequence
from types import FrameType
from typing import Any
from typing import NoReturn

import jax

ENV_COORDINATOR = "NAG_OPTAX_COORDINATOR"
ENV_NUM_PROCESSES = "NAG_OPTAX_NUM_PROCESSES"
ENV_PROCESS_ID = "NAG_OPTAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "NAG_OPTAX_LOCAL_DEVICES"
LOOPBACK = "127.0.0.1"
_FORCE_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\S*")


def free_port() -> int:
  """A TCP port free on 127.0.0.1 right now (the OS picks it).

  Returns:
    A port number, free when the call returns (another program may take
    it before it is used).

  Example:
    >>> import socket
    >>> from nag_optax import parallel
    >>> port = parallel.free_port()
    >>> 1024 <= port <= 65535
    True
    >>> with socket.socket() as s:  # free: it can be bound
    ...   s.bind(("127.0.0.1", port))
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def initialize(
  *, initialization_timeout: int = 120, heartbeat_timeout_seconds: int = 30
) -> bool:
  """Joins the multi-process run started by :func:`launch_local`, if any.

  Reads the coordinator, process id and device count that
  :func:`launch_local` (or ``python -m nag_optax launch``) put in the
  environment, sets the number of CPU devices and calls
  ``jax.distributed.initialize`` bound to 127.0.0.1 only. Call it before any
  other use of JAX. Without that environment it does nothing, so the same
  script also runs as a single process; on a real cluster call
  ``jax.distributed.initialize()`` yourself.

  If a process dies, JAX's coordination service notices its missing
  heartbeats and terminates every other process with a message that
  another task died (a non-zero exit, no hang): within
  ``heartbeat_timeout_seconds`` when a worker dies, at once when process 0
  (the coordinator) does. Restart them all from the last checkpoint.

  Args:
    initialization_timeout: seconds to wait for all processes to connect.
    heartbeat_timeout_seconds: seconds without a heartbeat after which a
      process counts as dead (JAX's default is 100).

  Returns:
    True if this process joined a multi-process run.

  Example:
    >>> from nag_optax import parallel
    >>> parallel.initialize()  # not started by launch_local: a single process
    False
  """
  env = os.environ
  if ENV_COORDINATOR not in env:
    return False
  address = env[ENV_COORDINATOR]
  jax.config.update("jax_num_cpu_devices", int(env[ENV_LOCAL_DEVICES]))
  jax.distributed.initialize(
    coordinator_address=address,
    coordinator_bind_address=address,
    num_processes=int(env[ENV_NUM_PROCESSES]),
    process_id=int(env[ENV_PROCESS_ID]),
    initialization_timeout=initialization_timeout,
    heartbeat_timeout_seconds=heartbeat_timeout_seconds,
  )
  return True


DEFAULT_GRACE_S = 5.0
"""Seconds between the signal sent to the launched processes and SIGKILL."""

_POLL_S = 0.02
_POSIX = os.name == "posix"
# Signals the launcher catches and sends on to its processes.
_FORWARDED = tuple(
  getattr(signal, name)
  for name in ("SIGTERM", "SIGINT", "SIGHUP")
  if hasattr(signal, name)
)


@dataclasses.dataclass(frozen=True)
class ProcessResult:
  """How one launched process ended.

  Attributes:
    process_id: the process's id in the run, from 0 (process 0 hosts the
      coordinator).
    returncode: its exit status as :mod:`subprocess` gives it: the code it
      exited with, or minus the number of the signal that ended it (-15 for
      SIGTERM, -2 for SIGINT, -9 for SIGKILL).
    output: its stdout and stderr, interleaved ("" when the output was not
      captured).
    stopped: True when the launcher ended it: it was still running when
      another process failed, the time limit passed or the launcher got a
      signal (``returncode`` then says how it ended).

  Example:
    >>> import sys
    >>> from nag_optax import parallel
    >>> command = [sys.executable, "-c", "raise SystemExit(3)"]
    >>> (result,) = parallel.launch_local(command, num_processes=1, check=False)
    >>> result
    ProcessResult(process_id=0, returncode=3, output='', stopped=False)
  """

  process_id: int
  returncode: int
  output: str
  stopped: bool = False


@dataclasses.dataclass(frozen=True)
class _Outcome:
  results: list[ProcessResult]
  signum: int | None  # the first signal the launcher got, if any
  timed_out: bool


def _child_env(
  base: Mapping[str, str],
  coordinator: str,
  num_processes: int,
  process_id: int,
  local_devices: int,
) -> dict[str, str]:
  env = dict(base)
  # A device count forced for the parent (tests force 8) must not leak in.
  flags = _FORCE_DEVICES.sub("", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = (
    f"{flags} --xla_force_host_platform_device_count={local_devices}".strip()
  )
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_NUM_CPU_DEVICES"] = str(local_devices)
  env[ENV_COORDINATOR] = coordinator
  env[ENV_NUM_PROCESSES] = str(num_processes)
  env[ENV_PROCESS_ID] = str(process_id)
  env[ENV_LOCAL_DEVICES] = str(local_devices)
  return env


def _is_number(value: object) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _validate(
  command: Sequence[str],
  num_processes: int,
  local_devices: int,
  timeout_s: float,
  grace_s: float,
  env: Mapping[str, str],
) -> None:
  """Raises ValueError, naming the argument, for anything that cannot run."""
  for name, value in (
    ("num_processes", num_processes),
    ("local_devices", local_devices),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not (_is_number(timeout_s) and timeout_s > 0):
    raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}.")
  if not (_is_number(grace_s) and 0 <= grace_s < math.inf):
    raise ValueError(f"grace_s must be a finite number >= 0, got {grace_s!r}.")
  if isinstance(command, str | bytes):
    raise ValueError(
      f"command must be a list such as ['python', 'train.py'], got {command!r}."
    )
  if not command:
    raise ValueError("command is empty: name the program to run.")
  program = os.fspath(command[0])
  search = os.pathsep.join(os.get_exec_path(dict(env)))
  if not program or shutil.which(program, path=search) is None:
    where = "no such executable file" if os.sep in program else "not found on PATH"
    raise ValueError(f"command: cannot run {program!r}: {where}.")


def _catch(received: list[int], even_if_ignored: Sequence[int]) -> dict[int, Any]:
  """Makes the forwarded signals append to ``received`` instead of their usual
  action (a signal ignored here stays ignored unless in ``even_if_ignored``);
  returns the handlers to put back."""

  def record(signum: int, frame: FrameType | None) -> None:
    del frame
    received.append(signum)

  previous: dict[int, Any] = {}
  for sig in _FORWARDED:
    old = signal.getsignal(sig)
    if old is None or (old == signal.SIG_IGN and sig not in even_if_ignored):
      continue  # None: a handler not set from Python, which cannot be put back
    previous[sig] = old
    signal.signal(sig, record)
  return previous


def _send(procs: Sequence[subprocess.Popen], sig: int, own_groups: bool) -> None:
  """Sends ``sig`` to each process; with ``own_groups`` to its whole process
  group, which also reaches what it started, even after it has exited."""
  for p in procs:
    if own_groups:
      # A group led by an exited process is gone (ProcessLookupError) unless
      # its children still run; some systems answer PermissionError instead.
      with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)
    elif p.poll() is None:
      if sig == getattr(signal, "SIGKILL", None):
        p.kill()
      else:
        p.send_signal(sig)


def _end(
  procs: Sequence[subprocess.Popen],
  sig: int,
  grace_s: float,
  own_groups: bool,
  received: list[int],
) -> None:
  """Sends ``sig`` to every process, waits up to ``grace_s`` seconds for them
  to exit (no longer once another signal arrives in ``received``), kills what
  is left with SIGKILL and waits for every process, so that each has its real
  exit status and none is left running."""
  seen = len(received)
  _send(procs, sig, own_groups)
  deadline = time.monotonic() + grace_s
  while (
    any(p.poll() is None for p in procs)
    and len(received) == seen
    and time.monotonic() < deadline
  ):
    time.sleep(_POLL_S)
  _send(procs, getattr(signal, "SIGKILL", signal.SIGTERM), own_groups)
  for p in procs:
    p.wait()  # SIGKILL cannot be caught: this returns once the kernel ends it


def _run(
  command: Sequence[str],
  *,
  num_processes: int,
  local_devices: int,
  timeout_s: float,
  grace_s: float,
  env: Mapping[str, str],
  capture_output: bool,
  port: int | None,
  even_if_ignored: Sequence[int] = (),
) -> _Outcome:
  """Starts the processes, waits until all exit, one fails, ``timeout_s``
  passes or a forwarded signal arrives, then ends them all (:func:`_end`)."""
  coordinator = f"{LOOPBACK}:{port or free_port()}"
  received: list[int] = []
  # Signal handlers can only be set from the main thread. From another thread
  # the processes stay in the caller's process group, so that signals sent to
  # the group (Ctrl-C in a terminal) still reach them.
  main_thread = threading.current_thread() is threading.main_thread()
  own_groups = _POSIX and main_thread
  previous = _catch(received, even_if_ignored) if main_thread else {}
  procs: list[subprocess.Popen] = []
  logs: list[Any] = []
  stopped: list[bool] = []
  timed_out = False
  try:
    try:
      for i in range(num_processes):
        if received:
          break
        log = tempfile.TemporaryFile(mode="w+") if capture_output else None
        logs.append(log)
        procs.append(
          subprocess.Popen(
            list(command),
            env=_child_env(env, coordinator, num_processes, i, local_devices),
            stdout=log,
            stderr=subprocess.STDOUT if capture_output else None,
            stdin=subprocess.DEVNULL,
            # Its own session and process group: a signal sent to the group
            # reaches the process and everything it started.
            start_new_session=own_groups,
          )
        )
      deadline = time.monotonic() + timeout_s
      while not received:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
          break
        if any(c not in (None, 0) for c in codes):
          break  # One failed: the others would wait for it until the time-out.
        if time.monotonic() > deadline:
          timed_out = True
          break
        time.sleep(_POLL_S)
    finally:
      stopped = [p.poll() is None for p in procs]
      sig = received[0] if received else signal.SIGTERM
      _end(procs, sig, grace_s, own_groups, received)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    outputs = []
    for log in logs:
      if log is not None:
        log.seek(0)
        outputs.append(log.read())
        log.close()
      else:
        outputs.append("")
  results = [
    ProcessResult(i, p.returncode, outputs[i], stopped[i]) for i, p in enumerate(procs)
  ]
  return _Outcome(results, received[0] if received else None, timed_out)


def _status(result: ProcessResult) -> str:
  """``exit 3``, ``exit -15 (SIGTERM), stopped by the launcher``."""
  text = f"exit {result.returncode}"
  if result.returncode < 0:
    try:
      text += f" ({signal.Signals(-result.returncode).name})"
    except ValueError:
      pass
  if result.stopped:
    text += ", stopped by the launcher"
  return text


def launch_local(
  command: Sequence[str],
  *,
  num_processes: int = 2,
  local_devices: int = 1,
  timeout_s: float = 300.0,
  env: Mapping[str, str] | None = None,
  capture_output: bool = True,
  check: bool = True,
  port: int | None = None,
  grace_s: float = DEFAULT_GRACE_S,
) -> list[ProcessResult]:
  """Runs ``command`` as ``num_processes`` JAX processes on this machine.

  Every process gets ``local_devices`` CPU devices and the coordinator
  address ``127.0.0.1:<free port>`` (loopback only); ``command`` (e.g.
  ``[sys.executable, "train.py"]``) must call
  :func:`nag_optax.parallel.initialize` before using JAX.

  No process outlives the call. It returns when every process has exited;
  before that, when one process fails (a non-zero exit), when
  ``timeout_s`` passes, or when this process gets SIGTERM, SIGINT or SIGHUP,
  the processes still running are ended: each gets SIGTERM (the signal
  received, for a signal), whatever still runs ``grace_s`` seconds later (or
  at a second signal) gets SIGKILL, and the call waits for every one, so
  each :class:`ProcessResult` holds the real exit status (minus the signal
  number when a signal ended it). Each process runs in its own process
  group, and the signals go to the whole group: what a process started ends
  with it. An exception raised in this process also ends them (the same
  way) before it propagates. A signal that arrived is then delivered again
  to this process's own handler (SIGINT raises KeyboardInterrupt; SIGTERM
  ends the process, unless a handler of yours says otherwise). Signals are
  caught only when called from the main thread; from another thread, the
  processes stay in this process's group instead. JAX processes that
  called ``jax.distributed.initialize`` catch SIGTERM (JAX's preemption
  service, see ``multihost_utils.reached_preemption_sync_point``), so they
  usually end at the SIGKILL, after the grace period (exit -9). Nothing can
  forward SIGKILL sent to this process.

  Args:
    command: the program and its arguments, run once per process.
    num_processes: number of processes (>= 1).
    local_devices: CPU devices per process (>= 1).
    timeout_s: wall-clock limit for the whole run.
    env: environment for the processes (default: this process's).
    capture_output: collect each process's output (else it is inherited).
    check: raise RuntimeError (with the outputs' tails) unless all exit 0.
    port: coordinator port (default: a free one).
    grace_s: seconds between the signal that ends the processes and SIGKILL.

  Returns:
    One :class:`ProcessResult` per process, in process-id order (per
    process started, if a signal came before all were).

  Raises:
    ValueError: naming the argument, for a non-positive count or time, an
      empty command or a program that cannot be found; nothing is started.

  Example:
    >>> import sys
    >>> from nag_optax import parallel
    >>> results = parallel.launch_local(
    ...     [sys.executable, "-c", "print('hello')"], num_processes=2)
    >>> [(r.process_id, r.returncode, r.output) for r in results]
    [(0, 0, 'hello\\n'), (1, 0, 'hello\\n')]
  """
  base = os.environ if env is None else env
  _validate(command, num_processes, local_devices, timeout_s, grace_s, base)
  outcome = _run(
    command,
    num_processes=num_processes,
    local_devices=local_devices,
    timeout_s=timeout_s,
    grace_s=grace_s,
    env=base,
    capture_output=capture_output,
    port=port,
  )
  if outcome.signum is not None:
    # The processes are gone; now the signal does what it does here.
    signal.raise_signal(outcome.signum)
  results = outcome.results
  failed = [r for r in results if r.returncode != 0]
  if check and failed:
    tails = "\n".join(
      f"--- process {r.process_id} ({_status(r)}) ---\n{r.output[-3000:]}"
      for r in results
    )
    why = f" (time limit of {timeout_s} s reached)" if outcome.timed_out else ""
    raise RuntimeError(
      f"launch_local: {len(failed)} of {num_processes} processes exited "
      f"non-zero{why}.\n" + tails
    )
  return results


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line, ``error: ...``, and exit status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"error: {message}\n")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
  return value


def _float(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return math.nan


def _timeout(text: str) -> float:
  value = _float(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
  return value


def _grace(text: str) -> float:
  value = _float(text)
  if not 0 <= value < math.inf:
    raise argparse.ArgumentTypeError(
      f"must be a finite number of seconds >= 0, got {text!r}"
    )
  return value


_EPILOG = """\
What the launcher guarantees:
  - SIGTERM, SIGINT and SIGHUP (unless ignored, as under nohup) sent to the
    launcher are forwarded to every process; each runs in its own process
    group and the signal goes to the whole group, so what a process started
    gets it too.
  - When a process exits non-zero or the time limit passes, the others get
    SIGTERM.
  - Whatever still runs GRACE seconds after that signal (or at a second
    signal) gets SIGKILL. JAX processes catch SIGTERM (JAX's preemption
    service), so they usually end there, with exit -9.
  - The launcher waits for every process and prints each non-zero exit
    status as it really is (-N: ended by signal N); nothing is left running.
    Only SIGKILL sent to the launcher itself cannot be forwarded.

Exit status: 0 when every process exits 0; 128+N after the launcher got
signal N (130 for SIGINT, 143 for SIGTERM); 1 when a process failed or the
time limit passed; 2 for a usage error (bad option, no command, a program
that cannot be found).
"""


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m nag_optax launch -n 2 -d 4 python train.py --flag``."""
  parser = _Parser(
    prog="python -m nag_optax launch",
    description="Run a command as several JAX processes on 127.0.0.1 "
    "(multi-host code on one machine); the command calls "
    "nag_optax.parallel.initialize().",
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "-n", "--num-processes", type=_positive_int, default=2, help="default: 2"
  )
  parser.add_argument(
    "-d",
    "--local-devices",
    type=_positive_int,
    default=1,
    help="CPU devices per process (default: 1)",
  )
  parser.add_argument(
    "-t",
    "--timeout",
    type=_timeout,
    default=3600.0,
    help="time limit of the run in seconds (default: 3600)",
  )
  parser.add_argument(
    "-g",
    "--grace",
    type=_grace,
    default=DEFAULT_GRACE_S,
    help="seconds between the signal that ends the processes and SIGKILL "
    f"(default: {DEFAULT_GRACE_S:g})",
  )
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("command: none given; name the program to run, e.g. python train.py")
  try:
    _validate(
      command,
      args.num_processes,
      args.local_devices,
      args.timeout,
      args.grace,
      os.environ,
    )
  except ValueError as e:
    parser.error(str(e))
  outcome = _run(
    command,
    num_processes=args.num_processes,
    local_devices=args.local_devices,
    timeout_s=args.timeout,
    grace_s=args.grace,
    env=os.environ,
    capture_output=False,
    port=None,
    # Forwarded even when started with them ignored (in the background of a
    # script): these are the signals users send to end a run.
    even_if_ignored=(signal.SIGTERM, signal.SIGINT),
  )
  if outcome.signum is not None:
    name = signal.Signals(outcome.signum).name
    print(f"launch: got {name}, sent it to every process", file=sys.stderr)
  if outcome.timed_out:
    print(f"launch: time limit of {args.timeout:g} s reached", file=sys.stderr)
  failed = [r for r in outcome.results if r.returncode != 0]
  for r in failed:
    print(f"process {r.process_id}: {_status(r)}", file=sys.stderr)
  if outcome.signum is not None:
    return 128 + outcome.signum
  return 1 if failed else 0
