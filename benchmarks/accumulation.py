"""Gradient accumulation and data parallelism: nag_optax against optax.MultiSteps.

Three measurements, all on CPU with 8 forced host devices (set below, before
JAX is imported):

1. Time per optimizer step of k micro-batches (k = 4 and 8; 16 rows per
   device per micro-batch) of an MLP of 0.40M and of 2.77M parameters, on
   each path of ``nag_optax.parallel`` (pmap; jit; jit with
   ZeRO-1 state), for three ways to accumulate: the usual "pmean the
   gradients every micro-step, then ``optax.MultiSteps``" (k calls; on the
   pmap path, the baseline of every ratio), ``nag_optax.accumulate_gradients``
   passed as the optimizer (k calls, one reduction on the emitting call) and
   ``micro_batches=k`` (one call, a ``lax.scan`` over the micro-batches, one
   reduction). The inner optimizer is ``nag_optax.nesterov`` throughout,
   params and state donated. For each, the bytes that collectives move per
   optimizer step, read from the compiled program (a collective in the
   emitting branch counts once, elsewhere once per call).
2. Single-device cost of one micro-step (jitted ``update`` +
   ``optax.apply_updates``, params and state donated) on a tree of 200 float32
   leaves totalling 10M parameters, ``optax.MultiSteps`` against
   ``accumulate_gradients`` (every_k large, so every timed call is a
   micro-step); and of a whole k = 4 cycle.
3. Optimizer-state bytes per device for the 2.77M model on each path.

Targets: in-step accumulation >= 2x the baseline at k = 4 on both models and
no slower than per-call accumulation; the jit ZeRO-1 path >= 1.8x the
baseline with 1/8 of the state per device; micro-step <= 0.6x
optax.MultiSteps.

    python benchmarks/accumulation.py            # full run, several minutes
    python benchmarks/accumulation.py --quick    # smoke run
"""

import os

# Run as a script: 8 CPU devices, set before JAX starts. Imported (by
# gpu_suite.py): the machine's own devices.
if __name__ == "__main__":
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


PATHS = ("pmap", "jit", "jit ZeRO-1")
VARIANTS = (
  "pmean every micro-step + optax.MultiSteps",
  "accumulate_gradients",
  "micro_batches",
)
BASELINE = ("pmap", VARIANTS[0])


def data_parallel(path, variant, k):
  """The path's step for one way of accumulating k micro-batches."""
  micro_batches = k if variant == "micro_batches" else 1
  if variant == VARIANTS[0]:
    tx = optax.MultiSteps(inner(), k)
  elif variant == "accumulate_gradients":
    tx = nag_optax.accumulate_gradients(inner(), k)
  else:
    tx = inner()
  if path == "pmap":
    return parallel.pmap_data_parallel(loss_fn, tx, micro_batches=micro_batches)
  return parallel.jit_data_parallel(
    loss_fn,
    tx,
    parallel.data_mesh(),
    micro_batches=micro_batches,
    zero1=path == "jit ZeRO-1",
  )


def step_candidate(path, variant, params, k, rows_per_device=ROWS_PER_DEVICE):
  """A candidate whose step is one optimizer step: k calls of one
  micro-batch, or one call of k micro-batches; and the bytes its
  collectives move per optimizer step."""
  dp = data_parallel(path, variant, k)
  calls = 1 if variant == "micro_batches" else k
  n = jax.device_count()
  batch = dp.shard_batch(host_batch(n * rows_per_device * (k // calls)))

  def step(state):
    for _ in range(calls):
      state, _ = dp.step(state, batch)
    return state

  state = dp.init(params)
  found = parallel.collectives(dp.step.lower(state, batch).compile().as_text())
  # A collective in the emitting branch (1) runs once per optimizer step,
  # one in the pass-through branch (0) on the other calls, any other on all.
  runs = {1: 1, 0: calls - 1, None: calls}
  moved = sum(c.input_bytes * runs[c.branch] for c in found)
  return _common.Candidate(f"{path} / {variant}", step, state), moved


def bench_steps(quick):
  rows = []
  raw = {}
  ks = (4,) if quick else (4, 8)
  for model, hidden in MODELS.items():
    if quick and model != "0.40M":
      continue
    params = mlp_params(hidden)
    for k in ks:
      cands, moved = [], {}
      for path in PATHS:
        for variant in VARIANTS:
          cand, moved[cand.name] = step_candidate(path, variant, params, k)
          cands.append(cand)
      big = model != "0.40M"
      times = _common.interleaved(
        cands,
        warmup=3,
        rounds=3 if quick else (8 if big else 25),
        per_round=1 if big or quick else 2,
      )
      for c in cands:
        c.release()
      base = statistics.median(times[" / ".join(BASELINE)])
      for name, ts in times.items():
        med = statistics.median(ts)
        path, variant = name.split(" / ")
        rows.append(
          [model, k, path, variant, med * 1e3, base / med, moved[name] / 2**20]
        )
      raw[f"{model}/k={k}"] = {
        name: _common.summarize(ts) | {"times_s": ts, "collective_bytes": moved[name]}
        for name, ts in times.items()
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
  """Optimizer-state bytes on the most loaded device, per path and variant."""
  params = mlp_params(MODELS["2.77M"])
  total = sum(
    int(np.prod(x.shape)) * x.dtype.itemsize
    for x in jax.tree.leaves(jax.eval_shape(inner().init, params))
  )
  rows, per_device = [], {}
  for path in PATHS:
    for variant in VARIANTS[1:]:
      state = data_parallel(path, variant, 4).init(params)
      name = f"{path} / {variant}"
      per_device[name] = bytes_per_device(state.opt_state)
      worst = max(per_device[name].values())
      rows.append([path, variant, worst / 2**20, worst / total])
  return rows, {
    "momentum_bytes": total,
    "per_device": {n: {str(d): b for d, b in v.items()} for n, v in per_device.items()},
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
      ["path", "accumulation", "state MiB per device (max)", "x the momentum"],
      state_rows,
    )
  )
  step_rows, step_raw = bench_steps(args.quick)
  print(
    _common.markdown_table(
      [
        "model",
        "k",
        "path",
        "accumulation",
        "ms per step (CPU)",
        "speed-up vs baseline",
        "collective MiB per step",
      ],
      step_rows,
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
        "baseline": " / ".join(BASELINE),
        "micro_step_tree": micro_tree,
      },
      "steps": {"rows": step_rows, "raw": step_raw},
      "micro_step": {"rows": micro_rows, "raw": micro_raw},
      "state_bytes": {"rows": state_rows, **state_raw},
    },
    env,
  )
  print(f"load average {env['load_average_start']} at start; {env['uptime_end']}")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
