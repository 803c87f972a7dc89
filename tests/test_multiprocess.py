"""Several processes through jax.distributed on 127.0.0.1: two processes x two
CPU devices get the single-process, single-device result on every path; a
lost process stops the other within a bounded time, and a restart from the
last checkpoint ends bit-identical to an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from nag_optax import parallel
from nag_optax.parallel import _multiprocess
from tests import toy_regression as toy

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = [sys.executable, "-m", "tests.multiprocess_worker"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
# The survivor of a lost process must be gone within this many seconds. The
# worker's heartbeat time-out is 20 s (on a busy 2-core machine 10 s can
# declare live processes dead); the survivor exits within about that time
# when a worker is killed, at once when the coordinator (process 0) is.
LOST_PROCESS_LIMIT_S = 60


def _launch(args, timeout_s):
  try:
    return parallel.launch_local(
      [*WORKER, *args], num_processes=2, local_devices=2, timeout_s=timeout_s, env=ENV
    )
  except RuntimeError as error:
    if "Address already in use" in str(error):  # the free port was taken
      pytest.skip(f"port race: {error}")
    raise


def test_two_processes_two_devices_each_equal_one_device(tmp_path):
  _launch(["equal", str(tmp_path / "out")], timeout_s=180)
  per_call = toy.reference_params(toy.K)
  every_call = toy.reference_params(1)
  for i in range(2):
    result = json.loads((tmp_path / f"out.{i}.json").read_text())
    assert result["process_count"] == 2 and result["device_count"] == 4
    for path, reference in (
      ("pmap", per_call),
      ("jit", every_call),
      ("jit_zero1", per_call),
    ):
      got = {k: np.asarray(v, np.float32) for k, v in result[path].items()}
      chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-6)
    # ZeRO-1 across processes: each process holds its 2 devices' quarters.
    assert result["zero1_local_trace_elements"] == 4 * 16 // 2


def _start(args, log_dir):
  """Both processes, without a launcher that would stop one when the other
  dies: what is under test is JAX's own failure detection."""
  coordinator = f"{_multiprocess.LOOPBACK}:{parallel.free_port()}"
  procs = []
  for i in range(2):
    env = _multiprocess._child_env(ENV, coordinator, 2, i, 2)
    log = open(log_dir / f"process{i}.log", "w")  # noqa: SIM115 (closed below)
    procs.append(
      subprocess.Popen(
        [*WORKER, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
      )
    )
    log.close()
  return procs


def _wait_for(path, text, procs, timeout_s):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if text in path.read_text():
      return
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.05)
  raise AssertionError(
    f"{text!r} never appeared in {path}:\n{path.read_text()[-3000:]}"
  )


STEPS = 12


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The final parameters of a 2 x 2 run that nothing interrupts."""
  pytest.importorskip("orbax.checkpoint")
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _launch(["train", str(workdir), str(STEPS), "0"], timeout_s=180)
  return np.load(workdir / "params.npz")


@pytest.mark.parametrize("victim", [1, 0], ids=["worker killed", "coordinator killed"])
def test_a_lost_process_stops_the_other_and_a_restart_resumes_exactly(
  tmp_path, uninterrupted, victim
):
  workdir = tmp_path / "interrupted"
  workdir.mkdir()
  procs = _start(["train", str(workdir), str(STEPS), "0.5"], workdir)
  survivor = 1 - victim
  try:
    # Killed after step 7: the last checkpoint holds step 6.
    _wait_for(workdir / f"process{victim}.log", "done 7", procs, timeout_s=120)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    returncode = procs[survivor].wait(timeout=LOST_PROCESS_LIMIT_S)
    elapsed = time.monotonic() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  output = (workdir / f"process{survivor}.log").read_text()
  assert returncode != 0
  assert "another task died" in output, output[-3000:]
  assert elapsed < LOST_PROCESS_LIMIT_S
  print(f"the survivor exited {elapsed:.1f} s after its peer was killed")

  results = _launch(["train", str(workdir), str(STEPS), "0"], timeout_s=180)
  assert "resumed 6" in results[0].output and "resumed 6" in results[1].output
  resumed = np.load(workdir / "params.npz")
  assert sorted(resumed.files) == sorted(uninterrupted.files)
  for name in uninterrupted.files:
    np.testing.assert_array_equal(resumed[name], uninterrupted[name])


def test_a_failing_process_stops_the_others_within_the_time_limit():
  code = (
    "import os, sys, time\n"
    "if os.environ['NAG_OPTAX_PROCESS_ID'] == '1': sys.exit(3)\n"
    "time.sleep(60)\n"
  )
  with pytest.raises(RuntimeError, match="process 1 \\(exit 3\\)"):
    parallel.launch_local([sys.executable, "-c", code], num_processes=2, timeout_s=30)
  results = parallel.launch_local(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    num_processes=2,
    timeout_s=1,
    check=False,
  )
  # Ended at the limit: SIGTERM, which a sleeping Python obeys.
  assert [(r.returncode, r.stopped) for r in results] == [(-15, True), (-15, True)]


def test_command_line_launcher(tmp_path):
  script = tmp_path / "hello.py"
  script.write_text(
    "import os, pathlib, sys\n"
    "e = os.environ\n"
    "out = pathlib.Path(sys.argv[1]) / e['NAG_OPTAX_PROCESS_ID']\n"
    "out.write_text(e['NAG_OPTAX_NUM_PROCESSES'] + ' ' + e['NAG_OPTAX_COORDINATOR'])\n"
  )
  cmd = [sys.executable, "-m", "nag_optax", "launch", "-n", "2", "-t", "60"]
  done = subprocess.run(
    [*cmd, sys.executable, str(script), str(tmp_path)],
    env=ENV,
    capture_output=True,
    text=True,
    timeout=90,
  )
  assert done.returncode == 0, done.stderr
  written = [(tmp_path / str(i)).read_text().split() for i in range(2)]
  assert [w[0] for w in written] == ["2", "2"]
  assert written[0][1] == written[1][1] and written[0][1].startswith("127.0.0.1:")
  failing = subprocess.run(
    [*cmd, sys.executable, "-c", "raise SystemExit(4)"],
    env=ENV,
    capture_output=True,
    text=True,
    timeout=90,
  )
  assert failing.returncode == 1 and "exit 4" in failing.stderr
