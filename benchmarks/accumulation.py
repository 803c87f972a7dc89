"""Gradient accumulation and data parallelism: nag_optax against optax.MultiSteps.

Three measurements, all on CPU with 8 forced host devices (set below, before
JAX is imported):

1. Time per accumulation cycle (k micro-batches, k = 4 and 8) of a pmapped
   data-parallel step on 8 devices, for an MLP of 0.40M and of 2.77M
   parameters (16 rows per device per micro-batch): the usual "pmean the
   gradients every micro-step, then ``optax.MultiSteps``" (baseline) against
   ``nag_optax.accumulate_gradients(..., axis_name=...)``, which runs the inner
   update and the cross-device mean only on the emitted step. Both through
   ``nag_optax.parallel.pmap_data_parallel`` with the same inner optimizer
   (``nag_optax.nesterov``), donation on; with ``accumulate_gradients`` that
   step applies the update inside the emitting branch (micro-steps leave the
   parameters alone). The same with ``shard_map_data_parallel``
   (jit(shard_map), no pmap). At k = 4 also: the pmap step with the optimizer
   inside ``optax.chain``, which the step can only update and then apply
   (under a conditional), to show what the fused application saves; and the
   jit + NamedSharding path (compiler all-reduce every micro-step),
   replicated and ZeRO-1, is timed too, for reference.
2. Single-device cost of one micro-step (jitted ``update`` +
   ``optax.apply_updates``, params and state donated) on a tree of 200 float32
   leaves totalling 10M parameters, ``optax.MultiSteps`` against
   ``accumulate_gradients`` (every_k large, so every timed call is a
   micro-step); and of a whole k = 4 cycle.
3. Optimizer-state bytes per device for the 2.77M model, replicated against
   ZeRO-1 (``jit_data_parallel(..., zero1=True)``).

Targets: >= 1.8x faster per cycle on 8 CPU devices; micro-step <= 0.6x
optax.MultiSteps; ZeRO-1 state 1/n per device.

    python benchmarks/accumulation.py            # full run, a few minutes
    python benchmarks/accumulation.py --quick    # smoke run
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

try:
  from benchmarks import _common  # noqa: E402
except ImportError:  # run as `python benchmarks/accumulation.py`
  import _common  # noqa: E402

import nag_optax  # noqa: E402
from nag_optax import parallel  # noqa: E402

N_DEVICES = 8
ROWS_PER_DEVICE = 16
IN_DIM, OUT_DIM = 256, 10
MODELS = {"0.40M": (1024, 128), "2.77M": (1536, 1536)}  # hidden widths
LEARNING_RATE, MOMENTUM = 1e-3, 0.9


def mlp_params(hidden, seed=0):
  dims = (IN_DIM, *hidden, OUT_DIM)
  rng = np.random.default_rng(seed)
  params = {}
  for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
    params[f"w{i}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
    params[f"b{i}"] = np.zeros(b, np.float32)
  return params


def num_params(tree):
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def loss_fn(params, batch):
  x, y = batch
  n_layers = len(params) // 2
  for i in range(n_layers):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n_layers - 1:
      x = jax.nn.relu(x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))


def host_batch(rows, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, IN_DIM)).astype(np.float32)
  y = rng.integers(0, OUT_DIM, size=rows).astype(np.int32)
  return x, y


def inner():
  return nag_optax.nesterov(LEARNING_RATE, MOMENTUM)


def cycle_candidate(name, dp, params, k):
  """A candidate whose step runs one accumulation cycle (k calls)."""
  batch = dp.shard_batch(host_batch(N_DEVICES * ROWS_PER_DEVICE))

  def cycle(state):
    for _ in range(k):
      state, _ = dp.step(state, batch)
    return state

  return _common.Candidate(name, cycle, dp.init(params))


def bench_cycles(quick):
  rows = []
  raw = {}
  ks = (4,) if quick else (4, 8)
  for model, hidden in MODELS.items():
    if quick and model != "0.40M":
      continue
    params = mlp_params(hidden)
    for k in ks:
      cands = [
        cycle_candidate(
          "pmean every micro-step + optax.MultiSteps",
          parallel.pmap_data_parallel(loss_fn, optax.MultiSteps(inner(), k)),
          params,
          k,
        ),
        cycle_candidate(
          "nag_optax.accumulate_gradients (pmean on emit)",
          parallel.pmap_data_parallel(
            loss_fn,
            nag_optax.accumulate_gradients(inner(), k, axis_name="batch"),
            reduce_gradients=False,
          ),
          params,
          k,
        ),
        cycle_candidate(
          "same, jit(shard_map)",
          parallel.shard_map_data_parallel(
            loss_fn,
            nag_optax.accumulate_gradients(inner(), k, axis_name="data"),
            reduce_gradients=False,
          ),
          params,
          k,
        ),
      ]
      if k == 4:
        cands.insert(
          2,
          cycle_candidate(
            "same, inside optax.chain (update, then apply)",
            parallel.pmap_data_parallel(
              loss_fn,
              optax.chain(
                nag_optax.accumulate_gradients(inner(), k, axis_name="batch")
              ),
              reduce_gradients=False,
            ),
            params,
            k,
          ),
        )
        mesh = parallel.data_mesh()
        for zero1 in (False, True):
          cands.append(
            cycle_candidate(
              f"jit NamedSharding{' ZeRO-1' if zero1 else ''} + accumulate_gradients",
              parallel.jit_data_parallel(
                loss_fn, nag_optax.accumulate_gradients(inner(), k), mesh, zero1=zero1
              ),
              params,
              k,
            )
          )
      big = model != "0.40M"
      times = _common.interleaved(
        cands,
        warmup=3,
        rounds=3 if quick else (8 if big else 25),
        per_round=1 if big or quick else 2,
      )
      for c in cands:
        c.release()
      base = statistics.median(times[cands[0].name])
      for name, ts in times.items():
        med = statistics.median(ts)
        rows.append([model, k, name, med * 1e3, base / med])
      raw[f"{model}/k={k}"] = {
        name: _common.summarize(ts) | {"times_s": ts} for name, ts in times.items()
      }
  return rows, raw


def bench_micro_step(quick):
  """200 leaves totalling 10M float32 parameters on one device."""
  leaves = 50 if quick else 200
  per_leaf = 10_000_000 // 200
  device = jax.devices()[0]
  make_params = lambda: {
    f"p{i:03d}": jax.device_put(jnp.full((per_leaf,), 0.01 * i, jnp.float32), device)
    for i in range(leaves)
  }
  grads = jax.tree.map(lambda p: p * 0.0 + 1e-3, make_params())

  def candidate(name, tx):
    @jax.jit
    def raw_step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step = jax.jit(raw_step, donate_argnums=(0, 1))
    params = make_params()
    return _common.Candidate(
      name, lambda carry: step(*carry, grads), (params, tx.init(params))
    )

  def cycle_candidate_(name, tx, k):
    step = jax.jit(
      lambda params, state, grads: _apply(tx, params, state, grads),
      donate_argnums=(0, 1),
    )

    def cycle(carry):
      for _ in range(k):
        carry = step(*carry, grads)
      return carry

    params = make_params()
    return _common.Candidate(name, cycle, (params, tx.init(params)))

  never = 1 << 30  # every timed call is a micro-step
  cands = [
    candidate("optax.MultiSteps micro-step", optax.MultiSteps(inner(), never)),
    candidate(
      "accumulate_gradients micro-step",
      nag_optax.accumulate_gradients(inner(), never),
    ),
    candidate("plain nesterov update (no accumulation)", inner()),
  ]
  times = _common.interleaved(cands, warmup=3, rounds=4 if quick else 10, per_round=2)
  for c in cands:
    c.release()
  k = 4
  cycle_cands = [
    cycle_candidate_(f"optax.MultiSteps cycle k={k}", optax.MultiSteps(inner(), k), k),
    cycle_candidate_(
      f"accumulate_gradients cycle k={k}", nag_optax.accumulate_gradients(inner(), k), k
    ),
  ]
  times |= _common.interleaved(
    cycle_cands, warmup=2, rounds=3 if quick else 6, per_round=2
  )
  for c in cycle_cands:
    c.release()
  base = {
    "micro": statistics.median(times[cands[0].name]),
    "cycle": statistics.median(times[cycle_cands[0].name]),
  }
  rows = []
  for name, ts in times.items():
    med = statistics.median(ts)
    ref = base["cycle"] if "cycle" in name else base["micro"]
    rows.append([name, med * 1e3, med / ref])
  raw = {name: _common.summarize(ts) | {"times_s": ts} for name, ts in times.items()}
  return rows, raw, {"leaves": leaves, "params": leaves * per_leaf}


def _apply(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def bytes_per_device(tree):
  per_device = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return per_device


def bench_state_bytes():
  params = mlp_params(MODELS["2.77M"])
  out = {}
  tx = nag_optax.accumulate_gradients(inner(), 4, axis_name="batch")
  state = parallel.pmap_data_parallel(loss_fn, tx, reduce_gradients=False).init(params)
  out["pmap (replicated)"] = bytes_per_device(state.opt_state)
  mesh = parallel.data_mesh()
  for zero1 in (False, True):
    tx = nag_optax.accumulate_gradients(inner(), 4)
    dp = parallel.jit_data_parallel(loss_fn, tx, mesh, zero1=zero1)
    name = "jit ZeRO-1" if zero1 else "jit (replicated)"
    out[name] = bytes_per_device(dp.init(params).opt_state)
  total = sum(
    int(np.prod(x.shape)) * x.dtype.itemsize
    for x in jax.tree.leaves(
      jax.eval_shape(nag_optax.accumulate_gradients(inner(), 4).init, params)
    )
  )
  rows = []
  for name, per_device in out.items():
    worst = max(per_device.values())
    rows.append([name, worst / 2**20, worst / total])
  return rows, {
    "total_state_bytes": total,
    "per_device": {n: {str(d): b for d, b in v.items()} for n, v in out.items()},
  }


def uptime():
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  except OSError:
    return None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke run")
  args = parser.parse_args(argv)
  assert jax.device_count() == N_DEVICES, jax.devices()
  env = _common.environment()
  env["uptime_start"] = uptime()

  state_rows, state_raw = bench_state_bytes()
  print(
    _common.markdown_table(
      ["optimizer state", "MiB per device (max)", "fraction of total"], state_rows
    )
  )
  cycle_rows, cycle_raw = bench_cycles(args.quick)
  print(
    _common.markdown_table(
      ["model", "k", "variant", "ms per cycle (CPU)", "speed-up vs baseline"],
      cycle_rows,
    )
  )
  micro_rows, micro_raw, micro_tree = bench_micro_step(args.quick)
  print(
    _common.markdown_table(
      ["single device, 10M params", "ms (CPU)", "ratio"], micro_rows
    )
  )
  env["uptime_end"] = uptime()
  path = _common.write_json(
    "accumulation_quick" if args.quick else "accumulation",
    {
      "settings": {
        "devices": N_DEVICES,
        "rows_per_device": ROWS_PER_DEVICE,
        "models": {m: num_params(mlp_params(h)) for m, h in MODELS.items()},
        "inner": f"nag_optax.nesterov({LEARNING_RATE}, {MOMENTUM})",
        "micro_step_tree": micro_tree,
      },
      "cycle": {"rows": cycle_rows, "raw": cycle_raw},
      "micro_step": {"rows": micro_rows, "raw": micro_raw},
      "state_bytes": {"rows": state_rows, **state_raw},
    },
    env,
  )
  print(f"load average {env['load_average_start']} at start; {env['uptime_end']}")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
