"""Two processes x two CPU devices through jax.distributed on 127.0.0.1 get
the single-process, single-device result (pmap, jit(shard_map) and jit +
ZeRO-1 paths)."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import numpy as np
import pytest

from nag_optax import parallel
from tests import toy_regression as toy

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_two_processes_two_devices_each_equal_one_device(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  try:
    parallel.launch_local(
      [sys.executable, "-m", "tests.multiprocess_worker", str(tmp_path / "out")],
      num_processes=2,
      local_devices=2,
      timeout_s=150,
      env=env,
    )
  except RuntimeError as error:
    if "Address already in use" in str(error):  # the free port was taken
      pytest.skip(f"port race: {error}")
    raise
  reference = toy.reference_params()
  for i in range(2):
    result = json.loads((tmp_path / f"out.{i}.json").read_text())
    assert result["process_count"] == 2 and result["device_count"] == 4
    for path in ("pmap", "shard_map", "jit_zero1"):
      got = {k: np.asarray(v, np.float32) for k, v in result[path].items()}
      chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-6)
    # ZeRO-1 across processes: each process holds its 2 devices' quarters.
    assert result["zero1_local_trace_elements"] == 4 * 16 // 2


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
  assert [r.returncode for r in results] == [None, None]  # killed at the limit


def test_command_line_launcher(tmp_path):
  script = tmp_path / "hello.py"
  script.write_text(
    "import os, pathlib, sys\n"
    "e = os.environ\n"
    "out = pathlib.Path(sys.argv[1]) / e['NAG_OPTAX_PROCESS_ID']\n"
    "out.write_text(e['NAG_OPTAX_NUM_PROCESSES'] + ' ' + e['NAG_OPTAX_COORDINATOR'])\n"
  )
  env = dict(os.environ, PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "nag_optax", "launch", "-n", "2", "-t", "60"]
  done = subprocess.run(
    [*cmd, sys.executable, str(script), str(tmp_path)],
    env=env,
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
    env=env,
    capture_output=True,
    text=True,
    timeout=90,
  )
  assert failing.returncode == 1 and "exit 4" in failing.stderr
