"""One process of tests/test_multiprocess.py (started by parallel.launch_local
or by the test itself), in one of two modes.

``equal OUT``: trains the model of tests/toy_regression.py through the pmap
path (accumulating across calls), the jit path (micro-batches inside the
step) and the jit path with ZeRO-1 state (both), each process feeding
its own rows of every global batch, each run resumed mid-cycle from a host
copy of its state; writes the final parameters (as seen from this process)
to ``OUT.<process index>.json``.

``train WORKDIR STEPS DELAY``: a longer jit ZeRO-1 run with Orbax checkpoints
of the sharded state in ``WORKDIR/checkpoints`` every 3 steps, resumed from
the latest one when it exists, printing ``done <step>`` after each step and
sleeping DELAY seconds; process 0 writes the final parameters to
``WORKDIR/params.npz``.
"""

import json
import sys
import time

import jax
import numpy as np

import nag_optax
from nag_optax import parallel
from tests import toy_regression as toy

CHECKPOINT_EVERY = 3


def _rows():
  """This process's rows of every global batch."""
  share = toy.ROWS // jax.process_count()
  me = jax.process_index()
  return slice(me * share, (me + 1) * share)


def equal(out_prefix):
  x, y = toy.data()
  rows = _rows()
  results = {"process_count": jax.process_count(), "device_count": jax.device_count()}

  def train(dp):
    """All steps, this process feeding its rows; the state and host params."""
    state = dp.init(toy.init_params())
    for t in range(toy.STEPS):
      if t == toy.K + 1:  # mid-cycle: a checkpoint's round trip
        state = dp.from_host(dp.to_host(state))
      state, _ = dp.step(state, dp.shard_batch((x[t, rows], y[t, rows])))
    return state, jax.tree.map(lambda a: a.tolist(), dp.to_host(state.params))

  accumulate = lambda: nag_optax.accumulate_gradients(toy.inner(), toy.K)
  _, results["pmap"] = train(parallel.pmap_data_parallel(toy.loss_fn, accumulate()))
  # Micro-batches inside the step: every call applies the full batch's
  # gradient (the reference with every_k = 1).
  _, results["jit"] = train(
    parallel.jit_data_parallel(toy.loss_fn, toy.inner(), micro_batches=2)
  )
  state, results["jit_zero1"] = train(
    parallel.jit_data_parallel(toy.loss_fn, accumulate(), zero1=True, micro_batches=2)
  )
  trace = state.opt_state.inner_opt_state.trace["w1"]
  results["zero1_local_trace_elements"] = sum(
    s.data.size for s in trace.addressable_shards
  )
  with open(f"{out_prefix}.{jax.process_index()}.json", "w", encoding="utf-8") as f:
    json.dump(results, f)


def _batch(step):
  rng = np.random.default_rng(1000 + step)
  x = rng.normal(size=(toy.ROWS, 4)).astype(np.float32)
  y = rng.normal(size=(toy.ROWS, 1)).astype(np.float32)
  return x[_rows()], y[_rows()]


def train(workdir, steps, delay):
  import orbax.checkpoint as ocp

  dp = parallel.jit_data_parallel(toy.loss_fn, toy.inner(), zero1=True, micro_batches=2)
  params = toy.init_params()
  checkpoints = ocp.CheckpointManager(f"{workdir}/checkpoints")
  start = checkpoints.latest_step() or 0
  if start:
    restored = checkpoints.restore(
      start, args=ocp.args.StandardRestore(dp.abstract_state(params))
    )
    state = parallel.TrainState(*restored)
    print(f"resumed {start}", flush=True)
  else:
    state = dp.init(params)
  for step in range(start, steps):
    state, _ = dp.step(state, dp.shard_batch(_batch(step)))
    jax.block_until_ready(state)
    if (step + 1) % CHECKPOINT_EVERY == 0:
      checkpoints.save(step + 1, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
    print(f"done {step + 1}", flush=True)
    time.sleep(delay)
  checkpoints.close()
  host = dp.to_host(state.params)
  if jax.process_index() == 0:
    np.savez(f"{workdir}/params.npz", **host)


if __name__ == "__main__":
  # Before anything starts JAX's backends: sets the devices, joins the run.
  if not parallel.initialize(initialization_timeout=60, heartbeat_timeout_seconds=20):
    raise SystemExit("not started by nag_optax.parallel.launch_local")
  if sys.argv[1] == "equal":
    equal(sys.argv[2])
  else:
    train(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
  jax.distributed.shutdown()
