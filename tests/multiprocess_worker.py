"""One process of tests/test_multiprocess.py (started by parallel.launch_local).

Trains the model of tests/toy_regression.py for a few steps, each process
feeding its own rows of every global batch, through the pmap and jit(shard_map)
paths (gradients averaged once per emitted step) and the jit path with
ZeRO-1 state, each resumed mid-cycle from a host copy of its state
(``to_host`` then ``from_host``, as from a checkpoint), and writes the final
parameters (as seen from this process) to ``<argv[1]>.<process index>.json``.
"""

import json
import sys

import jax

import nag_optax
from nag_optax import parallel
from tests import toy_regression as toy


def main(out_prefix):
  n_proc, me = jax.process_count(), jax.process_index()
  x, y = toy.data()
  share = toy.ROWS // n_proc  # this host's rows of every global batch
  rows = slice(me * share, (me + 1) * share)
  results = {"process_count": n_proc, "device_count": jax.device_count()}

  def train(dp):
    """All steps, this process feeding its rows; the state and host params."""
    state = dp.init(toy.init_params())
    for t in range(toy.STEPS):
      if t == toy.K + 1:  # mid-cycle: a checkpoint's round trip
        state = dp.from_host(dp.to_host(state))
      state, _ = dp.step(state, dp.shard_batch((x[t, rows], y[t, rows])))
    return state, jax.tree.map(lambda a: a.tolist(), dp.to_host(state.params))

  def accumulate(axis_name=None):
    return nag_optax.accumulate_gradients(toy.inner(), toy.K, axis_name=axis_name)

  _, results["pmap"] = train(
    parallel.pmap_data_parallel(
      toy.loss_fn, accumulate("batch"), reduce_gradients=False
    )
  )
  _, results["shard_map"] = train(
    parallel.shard_map_data_parallel(
      toy.loss_fn, accumulate("data"), reduce_gradients=False
    )
  )
  state, results["jit_zero1"] = train(
    parallel.jit_data_parallel(toy.loss_fn, accumulate(), zero1=True)
  )
  trace = state.opt_state.inner_opt_state.trace["w1"]
  results["zero1_local_trace_elements"] = sum(
    s.data.size for s in trace.addressable_shards
  )

  with open(f"{out_prefix}.{me}.json", "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  # Before anything starts JAX's backends: sets the devices, joins the run.
  if not parallel.initialize(initialization_timeout=60):
    raise SystemExit("not started by nag_optax.parallel.launch_local")
  main(sys.argv[1])
  jax.distributed.shutdown()
