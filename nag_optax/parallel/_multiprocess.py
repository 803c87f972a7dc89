"""Multi-process start-up: joining a ``jax.distributed`` run, and a local
launcher of N processes x M CPU devices on 127.0.0.1.

The launcher picks a free loopback port and starts the processes with the
coordinator address, their id and their device count in environment
variables; each process calls :func:`initialize`, which reads them. The
launcher itself starts no JAX runtime.
"""

import argparse
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from collections.abc import Sequence

import jax

ENV_COORDINATOR = "NAG_OPTAX_COORDINATOR"
ENV_NUM_PROCESSES = "NAG_OPTAX_NUM_PROCESSES"
ENV_PROCESS_ID = "NAG_OPTAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "NAG_OPTAX_LOCAL_DEVICES"
LOOPBACK = "127.0.0.1"
_FORCE_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\S*")


def free_port() -> int:
  """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
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


@dataclasses.dataclass(frozen=True)
class ProcessResult:
  """How one launched process ended.

  Attributes:
    process_id: the process's id in the run, from 0 (process 0 hosts the
      coordinator).
    returncode: its exit status, or None when it was killed after the
      time-out.
    output: its stdout and stderr, interleaved ("" when the output was not
      captured).
  """

  process_id: int
  returncode: int | None
  output: str


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


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
  """Terminates the still-running processes we started; kills stragglers."""
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


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
) -> list[ProcessResult]:
  """Runs ``command`` as ``num_processes`` JAX processes on this machine.

  Every process gets ``local_devices`` CPU devices and the coordinator
  address ``127.0.0.1:<free port>`` (loopback only); ``command`` (e.g.
  ``[sys.executable, "train.py"]``) must call
  :func:`nag_optax.parallel.initialize` before using JAX. When one process
  fails or ``timeout_s`` passes, the others are stopped (SIGTERM, then
  SIGKILL): no process outlives the call.

  Args:
    command: the program and its arguments, run once per process.
    num_processes: number of processes (>= 1).
    local_devices: CPU devices per process (>= 1).
    timeout_s: wall-clock limit for the whole run.
    env: environment for the processes (default: this process's).
    capture_output: collect each process's output (else it is inherited).
    check: raise RuntimeError (with the outputs' tails) unless all exit 0.
    port: coordinator port (default: a free one).

  Returns:
    One :class:`ProcessResult` per process, in process-id order.
  """
  for name, value in (
    ("num_processes", num_processes),
    ("local_devices", local_devices),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not command:
    raise ValueError("command must name a program to run.")
  coordinator = f"{LOOPBACK}:{port or free_port()}"
  base = os.environ if env is None else env
  procs: list[subprocess.Popen] = []
  logs = []
  try:
    for i in range(num_processes):
      log = tempfile.TemporaryFile(mode="w+") if capture_output else None
      logs.append(log)
      procs.append(
        subprocess.Popen(
          list(command),
          env=_child_env(base, coordinator, num_processes, i, local_devices),
          stdout=log,
          stderr=subprocess.STDOUT if capture_output else None,
          stdin=subprocess.DEVNULL,
        )
      )
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline:
        break
      if any(p.poll() not in (None, 0) for p in procs):
        break  # One failed: the others would wait for it until the time-out.
      time.sleep(0.05)
  finally:
    timed_out = [p.poll() is None for p in procs]
    _stop(procs)
  results = []
  for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
    output = ""
    if log is not None:
      log.seek(0)
      output = log.read()
      log.close()
    results.append(ProcessResult(i, None if timed_out[i] else p.returncode, output))
  if check and any(r.returncode != 0 for r in results):
    tails = "\n".join(
      f"--- process {r.process_id} (exit {r.returncode}) ---\n{r.output[-3000:]}"
      for r in results
    )
    raise RuntimeError(
      f"launch_local: {sum(r.returncode != 0 for r in results)} of "
      f"{num_processes} processes failed or timed out after {timeout_s} s.\n" + tails
    )
  return results


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m nag_optax launch -n 2 -d 4 python train.py --flag``."""
  parser = argparse.ArgumentParser(
    prog="python -m nag_optax launch",
    description="Run a command as several JAX processes on 127.0.0.1 "
    "(multi-host code on one machine); the command calls "
    "nag_optax.parallel.initialize().",
  )
  parser.add_argument("-n", "--num-processes", type=int, default=2)
  parser.add_argument("-d", "--local-devices", type=int, default=1)
  parser.add_argument("-t", "--timeout", type=float, default=3600.0)
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  results = launch_local(
    command,
    num_processes=args.num_processes,
    local_devices=args.local_devices,
    timeout_s=args.timeout,
    capture_output=False,
    check=False,
  )
  failed = [r for r in results if r.returncode != 0]
  for r in failed:
    print(f"process {r.process_id}: exit {r.returncode}", file=sys.stderr)
  return 1 if failed else 0
