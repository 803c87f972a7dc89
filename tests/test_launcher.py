"""The launcher leaves no process behind and reports how each one really
ended: `python -m nag_optax launch` and `parallel.launch_local` run in a
subprocess of the test (a hang fails the test at its time-out), with
workers that only sleep (no JAX), and get signals, failures and bad
arguments."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from nag_optax import parallel
from nag_optax.parallel import _multiprocess

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

REPO = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO))
LAUNCH = [sys.executable, "-m", "nag_optax", "launch", "-n", "2", "-d", "1"]
# Starting the launcher (it imports JAX) on a busy machine; not what is timed.
START_S = 60
# A worker that sleeps ends at once on SIGTERM or SIGINT: the launcher must be
# done well within the old 5 s grace period, a busy machine included.
PROMPT_S = 2.5

# One worker: python -c WORKER DIR MODE. It writes its pid to DIR/<process id>
# once running, then sleeps. MODE "deaf" ignores SIGTERM and SIGINT; "parent"
# first starts a child of its own that sleeps (its pid in DIR/<id>.child);
# "fail" makes process 1 exit 3 once process 0 runs.
WORKER = """\
import os, signal, subprocess, sys, time
d, mode = sys.argv[1], sys.argv[2]
i = os.environ['NAG_OPTAX_PROCESS_ID']
def mark(name, pid):
  with open(os.path.join(d, name + '.tmp'), 'w') as f:
    f.write(str(pid))
  os.replace(os.path.join(d, name + '.tmp'), os.path.join(d, name))
if mode == 'deaf':
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
if mode == 'parent':
  child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  mark(i + '.child', child.pid)
if mode == 'fail' and i == '1':
  while not os.path.exists(os.path.join(d, '0')):
    time.sleep(0.01)
  mark(i, os.getpid())
  sys.exit(3)
mark(i, os.getpid())
while True:
  time.sleep(0.1)
"""


def _gone(pid, timeout_s=1.0, zombie_ok=False):
  """Whether ``pid`` no longer exists (or, with zombie_ok, no longer runs)
  within ``timeout_s``."""
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    if zombie_ok:
      try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
      except OSError:
        return True
      if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return True  # ended, waiting for a parent that is not ours to reap it
    if time.monotonic() > deadline:
      return False
    time.sleep(0.02)


class _Run:
  """A launcher (or a Python parent) started in a subprocess; on exit kills
  whatever is left of it and of its workers, so a failing test leaves
  nothing behind either."""

  def __init__(self, tmp_path, argv):
    self.dir = tmp_path
    self.log_path = tmp_path / "launcher.log"
    with open(self.log_path, "w") as log:
      self.proc = subprocess.Popen(
        argv, env=ENV, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
      )
    self.pids = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    for pid in self.pids.values():
      if not _gone(pid, timeout_s=0, zombie_ok=True):
        os.kill(pid, signal.SIGKILL)

  def log(self):
    return self.log_path.read_text()

  def wait_for(self, *names):
    """The pids the workers wrote to these files, once all are there."""
    deadline = time.monotonic() + START_S
    while not all((self.dir / n).exists() for n in names):
      assert self.proc.poll() is None, f"ended early:\n{self.log()}"
      assert time.monotonic() < deadline, f"workers never started:\n{self.log()}"
      time.sleep(0.02)
    self.pids = {n: int((self.dir / n).read_text()) for n in names}
    return self.pids

  def wait(self, timeout_s):
    """The exit status and the seconds it took from now."""
    start = time.monotonic()
    try:
      returncode = self.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      pytest.fail(f"still running after {timeout_s} s:\n{self.log()}")
    return returncode, time.monotonic() - start


def _launcher(tmp_path, mode, *options):
  return _Run(
    tmp_path, [*LAUNCH, *options, sys.executable, "-c", WORKER, tmp_path, mode]
  )


@pytest.mark.parametrize(
  "sig,worker_status",
  [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)],
  ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_to_the_launcher_ends_every_worker(tmp_path, sig, worker_status):
  with _launcher(tmp_path, "sleep") as run:
    pids = run.wait_for("0", "1")
    run.proc.send_signal(sig)
    returncode, elapsed = run.wait(timeout_s=_multiprocess.DEFAULT_GRACE_S + 10)
    assert returncode == 128 + sig, run.log()
    for pid in pids.values():
      assert _gone(pid), f"worker {pid} left running"
    name = signal.Signals(sig).name
    for i in range(2):
      assert f"process {i}: exit {worker_status} ({name})" in run.log(), run.log()
    assert elapsed < PROMPT_S, elapsed


def test_workers_that_ignore_the_signal_are_killed_after_the_grace_period(tmp_path):
  with _launcher(tmp_path, "deaf", "--grace", "1") as run:
    pids = run.wait_for("0", "1")
    run.proc.send_signal(signal.SIGTERM)
    returncode, elapsed = run.wait(timeout_s=15)
    assert returncode == 128 + signal.SIGTERM, run.log()
    for pid in pids.values():
      assert _gone(pid), f"worker {pid} left running"
    for i in range(2):
      assert f"process {i}: exit -9 (SIGKILL)" in run.log(), run.log()
    assert 1.0 <= elapsed < 1.0 + PROMPT_S, elapsed


def test_what_a_worker_started_ends_with_it(tmp_path):
  with _launcher(tmp_path, "parent") as run:
    pids = run.wait_for("0", "1", "0.child", "1.child")
    run.proc.send_signal(signal.SIGTERM)
    returncode, _ = run.wait(timeout_s=_multiprocess.DEFAULT_GRACE_S + 10)
    assert returncode == 128 + signal.SIGTERM, run.log()
    for name, pid in pids.items():
      # The children are not the launcher's to reap.
      assert _gone(pid, zombie_ok="child" in name), f"{name} ({pid}) left running"


def test_a_failing_worker_ends_the_other_promptly_with_real_statuses(tmp_path):
  with _launcher(tmp_path, "fail") as run:
    pids = run.wait_for("0", "1")  # 1 exits 3 right after writing its pid
    returncode, elapsed = run.wait(timeout_s=_multiprocess.DEFAULT_GRACE_S + 10)
    assert returncode == 1, run.log()
    assert _gone(pids["0"]), "worker 0 left running"
    assert "process 1: exit 3\n" in run.log(), run.log()
    assert "process 0: exit -15 (SIGTERM), stopped by the launcher" in run.log()
    assert "None" not in run.log()
    assert elapsed < PROMPT_S, elapsed


# launch_local from a Python parent: prints its results as JSON lines.
# A Python program with the usual Ctrl-C handling. Started in the background
# by a non-interactive shell (as CI may be), a process inherits SIGINT
# ignored, and launch_local rightly leaves an ignored signal ignored.
PARENT = """\
import json, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from nag_optax import parallel
worker, d, mode = sys.argv[1:]
results = parallel.launch_local(
  [sys.executable, '-c', worker, d, mode], num_processes=2, check=False
)
for r in results:
  print(json.dumps([r.process_id, r.returncode, r.stopped]), flush=True)
"""


def _parent(tmp_path, mode):
  return _Run(tmp_path, [sys.executable, "-c", PARENT, WORKER, tmp_path, mode])


@pytest.mark.parametrize(
  "sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_launch_local_ends_every_worker_when_its_caller_is_interrupted(tmp_path, sig):
  with _parent(tmp_path, "sleep") as run:
    pids = run.wait_for("0", "1")
    run.proc.send_signal(sig)
    returncode, elapsed = run.wait(timeout_s=_multiprocess.DEFAULT_GRACE_S + 10)
    for pid in pids.values():
      assert _gone(pid), f"worker {pid} left running"
    # Once the workers are gone, the signal does what it does in the caller:
    # SIGTERM ends it; SIGINT raises KeyboardInterrupt, which, uncaught, ends
    # Python by SIGINT.
    assert returncode == -sig, run.log()
    if sig == signal.SIGINT:
      assert "KeyboardInterrupt" in run.log(), run.log()
    assert elapsed < PROMPT_S, elapsed


def test_launch_local_reports_real_statuses_when_a_worker_fails(tmp_path):
  with _parent(tmp_path, "fail") as run:
    run.wait_for("0", "1")
    returncode, elapsed = run.wait(timeout_s=_multiprocess.DEFAULT_GRACE_S + 10)
    assert returncode == 0, run.log()
    lines = [json.loads(line) for line in run.log().splitlines()]
    assert lines == [[0, -signal.SIGTERM, True], [1, 3, False]]
    assert elapsed < PROMPT_S, elapsed


def test_launch_local_reports_real_statuses_at_the_time_limit():
  results = parallel.launch_local(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    num_processes=2,
    timeout_s=1,
    check=False,
  )
  assert [(r.returncode, r.stopped) for r in results] == [(-15, True), (-15, True)]


@pytest.mark.parametrize(
  "options,message",
  [
    (["-n", "0", "true"], "argument -n/--num-processes: must be a positive integer"),
    (["-d", "-1", "true"], "argument -d/--local-devices: must be a positive integer"),
    (["-n", "two", "true"], "argument -n/--num-processes: must be a positive integer"),
    (["-t", "0", "true"], "argument -t/--timeout: must be a number of seconds > 0"),
    (["-g", "nan", "true"], "argument -g/--grace: must be a finite number"),
    ([], "command: none given"),
    (["--"], "command: none given"),
    (["no-such-program-nag"], "command: cannot run 'no-such-program-nag'"),
    (["./no/such/file"], "command: cannot run './no/such/file': no such"),
  ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, options, message):
  with pytest.raises(SystemExit) as exited:
    _multiprocess.main(options)
  assert exited.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert message in err, err


def test_usage_error_from_the_command_line(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "nag_optax", "launch", "-n", "0", "true"],
    env=ENV,
    capture_output=True,
    text=True,
    timeout=START_S,
  )
  assert done.returncode == 2
  assert done.stderr.startswith("error: argument -n/--num-processes"), done.stderr
  assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"num_processes": 0}, "num_processes"),
    ({"local_devices": True}, "local_devices"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"grace_s": -1}, "grace_s"),
    ({"grace_s": float("inf")}, "grace_s"),
    ({"command": []}, "command"),
    ({"command": "python train.py"}, "command"),
    ({"command": ["no-such-program-nag"]}, "command"),
  ],
)
def test_launch_local_rejects_bad_arguments_before_starting_anything(kwargs, name):
  kwargs = {"command": ["true"], **kwargs}
  with pytest.raises(ValueError, match=f"^{name}"):
    parallel.launch_local(**kwargs)


def test_the_help_states_the_guarantees(capsys):
  with pytest.raises(SystemExit):
    _multiprocess.main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  for phrase in (
    "forwarded to every process",
    "SIGKILL",
    "nothing is left running",
    "--grace",
    "128+N",
  ):
    assert phrase in text
  doc = " ".join(parallel.launch_local.__doc__.split())
  for phrase in ("No process outlives the call", "SIGKILL", "real exit status"):
    assert phrase in doc
