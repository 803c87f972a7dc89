"""One process of tests/test_multiprocess.py (started by parallel.launch_local).

Trains the model of tests/test_parallel.py for a few steps, each process
feeding its own rows of every global batch, through the pmap and jit(shard_map)
paths (gradients averaged once per emitted step) and the jit path with
ZeRO-1 state, and
writes the final parameters (as seen from this process) to
``<argv[1]>.<process index>.json``.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from nag_optax import parallel

K = 2
STEPS = 4


def data():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(STEPS, 32, 4)).astype(np.float32)
  y = rng.normal(size=(STEPS, 32, 1)).astype(np.float32)
  return x, y


def init_params():
  rng = np.random.default_rng(0)
  return {
    "w1": jnp.asarray(rng.normal(size=(4, 16)) * 0.5, jnp.float32),
    "b1": jnp.zeros(16),
    "w2": jnp.asarray(rng.normal(size=(16, 1)) * 0.5, jnp.float32),
    "b2": jnp.zeros(1),
  }


def loss_fn(params, batch):
  x, y = batch
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def inner():
  schedule = optax.linear_schedule(0.1, 0.02, transition_steps=4)
  return nag_optax.nesterov(schedule, momentum=0.9, weight_decay=1e-3)


def main(out_prefix):
  n_proc, me = jax.process_count(), jax.process_index()
  x, y = data()
  rows = slice(me * 32 // n_proc, (me + 1) * 32 // n_proc)  # this host's share
  results = {"process_count": n_proc, "device_count": jax.device_count()}

  tx = nag_optax.accumulate_gradients(inner(), K, axis_name="batch")
  dp = parallel.pmap_data_parallel(loss_fn, tx, reduce_gradients=False)
  state = dp.init(init_params())
  for t in range(STEPS):
    state, _ = dp.step(state, dp.shard_batch((x[t, rows], y[t, rows])))
  results["pmap"] = jax.tree.map(lambda a: a.tolist(), dp.to_host(state.params))

  tx = nag_optax.accumulate_gradients(inner(), K, axis_name="data")
  dp = parallel.shard_map_data_parallel(loss_fn, tx, reduce_gradients=False)
  state = dp.init(init_params())
  for t in range(STEPS):
    state, _ = dp.step(state, dp.shard_batch((x[t, rows], y[t, rows])))
  results["shard_map"] = jax.tree.map(lambda a: a.tolist(), dp.to_host(state.params))

  tx = nag_optax.accumulate_gradients(inner(), K)
  dp = parallel.jit_data_parallel(loss_fn, tx, zero1=True)
  state = dp.init(init_params())
  for t in range(STEPS):
    state, _ = dp.step(state, dp.shard_batch((x[t, rows], y[t, rows])))
  trace = state.opt_state.inner_opt_state.trace["w1"]
  results["zero1_local_trace_elements"] = sum(
    s.data.size for s in trace.addressable_shards
  )
  results["jit_zero1"] = jax.tree.map(lambda a: a.tolist(), dp.to_host(state.params))

  with open(f"{out_prefix}.{me}.json", "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  # Before anything starts JAX's backends: sets the devices, joins the run.
  if not parallel.initialize(initialization_timeout=60):
    raise SystemExit("not started by nag_optax.parallel.launch_local")
  main(sys.argv[1])
  jax.distributed.shutdown()
