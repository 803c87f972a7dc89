"""Bad input to the data-parallel builders: a clear Python error, never a
crash. Cases that used to crash the process run in a subprocess of their
own, so that a crash fails the test instead of the test run."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from nag_optax import parallel
from tests import toy_regression as toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, devices=2, timeout=180):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
  )
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_a_donated_state_passed_again_is_a_clear_error_not_a_crash():
  # jax.jit(donate_argnums=...) with a sharded argument used after donation
  # ended the process with SIGSEGV here; the builders check first.
  result = _run(
    """
    import numpy as np
    import nag_optax
    from nag_optax import parallel
    from tests import toy_regression as toy

    builders = {
      "jit": lambda: parallel.jit_data_parallel(toy.loss_fn, toy.inner()),
      "jit ZeRO-1": lambda: parallel.jit_data_parallel(
        toy.loss_fn, toy.inner(), zero1=True),
      "pmap": lambda: parallel.pmap_data_parallel(toy.loss_fn, toy.inner()),
    }
    x, y = toy.data(np.float32)
    for name, build in builders.items():
      dp = build()
      state = dp.init(toy.init_params())
      batch = dp.shard_batch((x[0], y[0]))
      new_state, _ = dp.step(state, batch)
      try:
        dp.step(state, batch)
      except ValueError as error:
        print(name, "|", error)
      new_state, _ = dp.step(new_state, batch)  # the returned state still works
    """
  )
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert [line.split(" | ")[0] for line in lines] == ["jit", "jit ZeRO-1", "pmap"]
  for line in lines:
    assert "was donated to an earlier step" in line and "donate=False" in line


def test_an_empty_device_list_is_refused_before_anything_runs():
  with pytest.raises(ValueError, match="data_mesh got no devices"):
    parallel.data_mesh([])
  gpus = [d for d in jax.devices() if d.platform == "gpu"]  # none on this CPU
  with pytest.raises(ValueError, match="devices is empty"):
    parallel.pmap_data_parallel(toy.loss_fn, toy.inner(), devices=gpus)


def test_donate_false_keeps_the_input_state_usable():
  import numpy as np

  dp = parallel.jit_data_parallel(toy.loss_fn, toy.inner(), donate=False)
  state = dp.init(toy.init_params())
  x, y = toy.data(np.float32)
  batch = dp.shard_batch((x[0], y[0]))
  first, _ = dp.step(state, batch)
  again, _ = dp.step(state, batch)
  np.testing.assert_array_equal(
    dp.to_host(first.params)["w1"], dp.to_host(again.params)["w1"]
  )


@pytest.mark.parametrize("builder", ["jit", "pmap"])
def test_has_aux_that_does_not_match_the_loss_is_named(builder):
  import numpy as np

  build = {
    "jit": parallel.jit_data_parallel,
    "pmap": parallel.pmap_data_parallel,
  }[builder]
  x, y = toy.data(np.float32)
  with_aux = lambda p, b: (toy.loss_fn(p, b), {"n": 1.0})
  for loss, has_aux, match in [
    (with_aux, False, "build the step with has_aux=True"),
    (toy.loss_fn, True, "has_aux=True but loss_fn"),
  ]:
    dp = build(loss, toy.inner(), has_aux=has_aux)
    state = dp.init(toy.init_params())
    with pytest.raises(ValueError, match=match):
      dp.step(state, dp.shard_batch((x[0], y[0])))


def test_a_collective_over_another_axis_name_names_the_step_axis():
  import numpy as np

  x, y = toy.data(np.float32)
  wrong = lambda p, b: jax.lax.pmean(toy.loss_fn(p, b), "batch")
  dp = parallel.jit_data_parallel(wrong, toy.inner())  # maps over "data"
  state = dp.init(toy.init_params())
  with pytest.raises(ValueError, match="maps the devices over the axis 'data'"):
    dp.step(state, dp.shard_batch((x[0], y[0])))
  right = lambda p, b: jax.lax.pmean(toy.loss_fn(p, b), "data")
  dp = parallel.jit_data_parallel(right, toy.inner())
  state, metrics = dp.step(dp.init(toy.init_params()), dp.shard_batch((x[0], y[0])))
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))


def test_a_pmap_state_given_to_the_jit_step_is_named():
  import numpy as np

  x, y = toy.data(np.float32)
  pmapped = parallel.pmap_data_parallel(toy.loss_fn, toy.inner())
  state = pmapped.init(toy.init_params())
  dp = parallel.jit_data_parallel(toy.loss_fn, toy.inner())
  with pytest.raises(ValueError, match=r"\['b1'\].*split across devices"):
    dp.step(state, dp.shard_batch((x[0], y[0])))
  moved = dp.from_host(pmapped.to_host(state))  # the documented way across
  new, _ = dp.step(moved, dp.shard_batch((x[0], y[0])))
  assert new.params["w1"].shape == toy.init_params()["w1"].shape
