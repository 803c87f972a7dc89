"""Cost of one optimizer update: nag_optax against optax, PyTorch and memory.

For each parameter tree (one float32 leaf of 1M, 10M, 50M parameters; 200
leaves totalling 10M; the 62 tensors of a torchvision ResNet-18) it times a
jitted ``update`` + ``optax.apply_updates`` with params and optimizer state
donated, for:

* ``nag_optax.nesterov`` in the "pytorch" and "sutskever" forms, and with a
  bfloat16 momentum buffer (``accumulator_dtype``);
* ``optax.sgd(nesterov=True)`` (the baseline of every ratio), float32 and
  with a bfloat16 accumulator;
* ``torch.optim.SGD(nesterov=True)``, foreach and fused, under
  ``torch.no_grad`` (if torch is installed).

The memory-bandwidth limit is measured in the same run: the faster of a
jitted, donated in-place ``x += y`` and torch's ``x.add_(y)`` on 50M float32
(12 bytes per element moved). Each update is reported as bytes per second at
20 bytes per parameter (read p, g, m; write m, p: the minimum for a float32
Nesterov step) and as a fraction of that limit, with XLA's own count of
bytes, array fusions and array copies from the optimized HLO. Candidates
alternate round by round, so machine noise hits all alike, in two blocks
with the creation order reversed; ratios are to optax in the same rounds.

    python benchmarks/update_step.py            # full run, about 80 s on 2 cores
    python benchmarks/update_step.py --quick    # smoke run, about 15 s
"""

import argparse
import re
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:  # run as python benchmarks/<script>.py
  import _common

import nag_optax

try:
  import torch
except ImportError:  # pragma: no cover - torch is optional
  torch = None

LEARNING_RATE = 1e-3
MOMENTUM = 0.9
BYTES_PER_PARAM = 20  # float32 Nesterov: read p, g, m; write m, p.
BANDWIDTH_ELEMENTS = 50_000_000
SACRIFICE = "allocation warm-up (not reported)"


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
  """Parameter shapes of torchvision's ResNet-18 (HWIO convolutions)."""
  shapes: list[tuple[int, ...]] = [(7, 7, 3, 64), (64,), (64,)]
  channels = 64
  for stage, width in enumerate((64, 128, 256, 512)):
    for block in range(2):
      stride_or_widen = block == 0 and stage > 0
      shapes += [(3, 3, channels, width), (width,), (width,)]
      shapes += [(3, 3, width, width), (width,), (width,)]
      if stride_or_widen:
        shapes += [(1, 1, channels, width), (width,), (width,)]
      channels = width
  shapes += [(512, num_classes), (num_classes,)]
  return shapes


def cases(quick: bool) -> dict[str, list[tuple[int, ...]]]:
  if quick:
    return {
      "1 leaf of 1M": [(1_000_000,)],
      "200 leaves, 1M total": [(5_000,)] * 200,
      "ResNet-18 (11.7M, 62 leaves)": resnet18_shapes(),
    }
  return {
    "1 leaf of 1M": [(1_000_000,)],
    "1 leaf of 10M": [(10_000_000,)],
    "1 leaf of 50M": [(50_000_000,)],
    "200 leaves, 10M total": [(50_000,)] * 200,
    "ResNet-18 (11.7M, 62 leaves)": resnet18_shapes(),
  }


def jax_optimizers() -> dict[str, optax.GradientTransformation]:
  return {
    "optax.sgd": optax.sgd(LEARNING_RATE, MOMENTUM, nesterov=True),
    "nag pytorch": nag_optax.nesterov(LEARNING_RATE, MOMENTUM),
    "nag sutskever": nag_optax.nesterov(LEARNING_RATE, MOMENTUM, form="sutskever"),
    "optax.sgd bf16 m": optax.sgd(
      LEARNING_RATE, MOMENTUM, nesterov=True, accumulator_dtype=jnp.bfloat16
    ),
    "nag bf16 m": nag_optax.nesterov(
      LEARNING_RATE, MOMENTUM, accumulator_dtype=jnp.bfloat16
    ),
  }


def make_tree(shapes, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {
    f"p{i:03d}": jnp.asarray(scale * rng.standard_normal(s, dtype=np.float32))
    for i, s in enumerate(shapes)
  }


def hlo_stats(compiled, n_params: int) -> dict[str, float | int | None]:
  """Array fusions and copies in the optimized HLO, and XLA's bytes estimate.

  Counts only instructions of the entry computation with a non-scalar result,
  so the scalar bookkeeping of a state (step counters) is left out.
  """
  text = compiled.as_text()
  entry = text[text.find("ENTRY") :]
  array_op = r"= \w+\[[^\]]+\]\S* {}\("
  stats: dict[str, float | int | None] = {
    "array_fusions": len(re.findall(array_op.format("fusion"), entry)),
    "array_copies": len(re.findall(array_op.format("copy"), entry)),
    "xla_bytes_per_param": None,
  }
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    stats["xla_bytes_per_param"] = cost["bytes accessed"] / n_params
  except Exception:  # noqa: BLE001 - cost analysis is best effort
    pass
  return stats


def jax_candidate(name, tx, shapes, grads):
  params = make_tree(shapes, seed=1)
  state = tx.init(params)

  def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(update, donate_argnums=(0, 1))
  compiled = step.lower(params, state, grads).compile()
  n_params = sum(x.size for x in jax.tree.leaves(params))
  stats = hlo_stats(compiled, n_params)
  return _common.Candidate(
    name, lambda carry: compiled(*carry, grads), (params, state)
  ), stats


def torch_device() -> str | None:
  """Where PyTorch runs: JAX's platform if torch has it there, else None.

  On a GPU machine a CPU-only torch would not be a fair baseline: skipped.
  """
  if torch is None:
    return None
  backend = jax.default_backend()
  if backend == "cpu":
    return "cpu"
  if backend == "gpu" and torch.cuda.is_available():
    return "cuda"
  return None


def torch_sync(device):
  if device == "cuda":

    def sync(carry):
      torch.cuda.synchronize()
      return carry

    return sync
  return lambda carry: carry


def torch_candidate(name, shapes, grads, device, **flags):
  params = [
    torch.from_numpy(np.array(v)).to(device).requires_grad_(True)
    for v in make_tree(shapes, seed=1).values()
  ]
  for p, g in zip(params, grads.values(), strict=True):
    p.grad = torch.from_numpy(np.array(g)).to(device)
  opt = torch.optim.SGD(
    params, lr=LEARNING_RATE, momentum=MOMENTUM, nesterov=True, **flags
  )

  def step(carry):
    # The foreach path adds the look-ahead into p.grad in place, so the
    # gradients grow from step to step; a candidate runs a few dozen steps,
    # far from overflow, and the timing does not depend on the values.
    with torch.no_grad():
      opt.step()
    return carry

  return _common.Candidate(name, step, (params, opt), sync=torch_sync(device))


def bandwidth(n: int, quick: bool, device: str | None) -> dict[str, object]:
  """In-place ``x += y`` on ``n`` float32: 12 bytes per element moved.

  Timed as a jitted JAX function with ``x`` donated and, where installed, as
  PyTorch's ``x.add_(y)``; the limit is the faster of the two.
  """
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.standard_normal(n, dtype=np.float32))
  add = jax.jit(lambda x, y: x + y, donate_argnums=0)
  candidates = [
    _common.Candidate(name, lambda x: add(x, y), jnp.zeros(n, jnp.float32))
    for name in (SACRIFICE, "jax add")
  ]
  if device is not None:
    ty = torch.from_numpy(np.array(y)).to(device)
    candidates.append(
      _common.Candidate(
        "torch add_",
        lambda x: x.add_(ty),
        torch.zeros(n, device=device),
        sync=torch_sync(device),
      )
    )
  times = _common.interleaved(
    candidates, warmup=3, rounds=4 if quick else 10, per_round=2
  )
  for c in candidates:
    c.release()
  del times[SACRIFICE]
  out = {}
  for name, t in times.items():
    out[name] = {
      "bytes_per_element": 12,
      "gb_per_s": 12 * n / statistics.median(t) / 1e9,
      **_common.summarize(t),
      "times_s": t,
    }
  return out


def per_round_ratios(times, base, per_round):
  """Median of each round's calls of ``times`` over the same round's ``base``."""
  rounds = len(base) // per_round
  return [
    statistics.median(times[r * per_round : (r + 1) * per_round])
    / statistics.median(base[r * per_round : (r + 1) * per_round])
    for r in range(rounds)
  ]


def make_candidates(names, shapes, grads, device):
  """Candidates in the order of ``names``, after a sacrificial one.

  In this process the first tree of buffers allocated for a case ran up to
  1.7x slower than the next ones, whichever optimizer owned it (reproduced
  by reversing the creation order): a sacrificial optax candidate, timed but
  not reported, absorbs that.
  """
  optimizers = jax_optimizers()
  first, _ = jax_candidate(SACRIFICE, optimizers["optax.sgd"], shapes, grads)
  candidates, stats = [first], {}
  for name in names:
    if name in optimizers:
      candidate, stats[name] = jax_candidate(name, optimizers[name], shapes, grads)
    else:
      flag = {"torch foreach": "foreach", "torch fused": "fused"}[name]
      candidate = torch_candidate(name, shapes, grads, device, **{flag: True})
    candidates.append(candidate)
  return candidates, stats


def run_case(label, shapes, *, quick, limit_gbs, device):
  """Times every candidate on one tree: two blocks, creation order reversed.

  Within a block the candidates alternate round by round (see
  ``_common.interleaved``); ratios to optax are taken per round, within the
  block, and pooled over blocks.
  """
  n_params = int(sum(np.prod(s) for s in shapes))
  grads = make_tree(shapes, seed=2, scale=1e-3)
  names = list(jax_optimizers())
  if device is not None:
    names += ["torch foreach", "torch fused"]
  per_round = 2
  rounds = 3 if quick else (6 if n_params >= 50_000_000 else 8)
  blocks = 1 if quick else 2
  load_before = _common.load_average()
  times = {name: [] for name in names}
  ratios = {name: [] for name in names}
  for block in range(blocks):
    order = names if block % 2 == 0 else names[::-1]
    candidates, stats = make_candidates(order, shapes, grads, device)
    block_times = _common.interleaved(
      candidates, warmup=3, rounds=rounds, per_round=per_round
    )
    for c in candidates:
      c.release()
    for name in names:
      times[name] += block_times[name]
      ratios[name] += per_round_ratios(
        block_times[name], block_times["optax.sgd"], per_round
      )
  base = times["optax.sgd"]
  base_med = statistics.median(base)
  results = {}
  for name, t in times.items():
    med = statistics.median(t)
    r = ratios[name]
    q = statistics.quantiles(r, n=4) if len(r) > 1 else r * 3
    gbs = BYTES_PER_PARAM * n_params / med / 1e9
    results[name] = {
      **_common.summarize(t),
      "ratio_to_optax": med / base_med,
      "per_round_ratio_median": statistics.median(r),
      "per_round_ratio_q1_q3": [q[0], q[2]],
      "gb_per_s_at_20B": gbs,
      "fraction_of_limit": gbs / limit_gbs,
      **stats.get(name, {}),
      "times_s": t,
    }
  for bf16, f32 in (("nag bf16 m", "nag pytorch"), ("optax.sgd bf16 m", "optax.sgd")):
    results[bf16]["ratio_to_f32_momentum"] = (
      results[bf16]["median_s"] / results[f32]["median_s"]
    )
  return {
    "label": label,
    "n_params": n_params,
    "n_leaves": len(shapes),
    "blocks": blocks,
    "rounds_per_block": rounds,
    "per_round": per_round,
    "load_average_before": load_before,
    "load_average_after": _common.load_average(),
    "candidates": results,
  }


def print_case(case):
  rows = []
  for name, r in case["candidates"].items():
    q1, q3 = r["per_round_ratio_q1_q3"]
    rows.append(
      [
        name,
        f"{r['median_s'] * 1e3:.2f}",
        f"{r['ratio_to_optax']:.3f} ({q1:.2f}-{q3:.2f})",
        f"{r['gb_per_s_at_20B']:.1f}",
        f"{100 * r['fraction_of_limit']:.0f}%",
        f"{r['xla_bytes_per_param']:.0f}" if r.get("xla_bytes_per_param") else "-",
        r.get("array_fusions", "-"),
        r.get("array_copies", "-"),
      ]
    )
  print(
    f"\n{case['label']}: {case['n_params']:,} params, {case['n_leaves']} leaves,"
    f" load {case['load_average_before']}"
  )
  print(
    _common.markdown_table(
      [
        "optimizer",
        "median ms",
        "ratio to optax (per-round IQR)",
        "GB/s at 20 B/param",
        "of limit",
        "XLA B/param",
        "fusions",
        "copies",
      ],
      rows,
    )
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fast smoke run")
  parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
  parser.add_argument(
    "--output", default=None, help="results name (default update_step[_quick])"
  )
  args = parser.parse_args(argv)
  env = _common.environment()
  device = None if args.no_torch else torch_device()
  env["torch_device"] = device
  if device is not None:
    env["torch_threads"] = torch.get_num_threads()

  limit = bandwidth(BANDWIDTH_ELEMENTS, args.quick, device)
  limit_kernel = max(limit, key=lambda k: limit[k]["gb_per_s"])
  limit_gbs = limit[limit_kernel]["gb_per_s"]
  kinds = sorted({d["device_kind"] for d in env["devices"]})
  print(
    f"{jax.default_backend().upper()} ({', '.join(kinds)}); host"
    f" {env['machine']['cpu_model']}, {env['machine']['cpu_count']} cores;"
    f" load average {env['load_average_start']}; torch on {device}"
  )
  kernels = ", ".join(f"{k} {v['gb_per_s']:.1f} GB/s" for k, v in limit.items())
  print(
    f"memory-bandwidth limit {limit_gbs:.1f} GB/s: in-place x += y on"
    f" {BANDWIDTH_ELEMENTS:,} float32 (12 B/elem): {kernels}"
  )

  results = []
  for label, shapes in cases(args.quick).items():
    case = run_case(label, shapes, quick=args.quick, limit_gbs=limit_gbs, device=device)
    print_case(case)
    sys.stdout.flush()
    results.append(case)

  name = args.output or ("update_step_quick" if args.quick else "update_step")
  path = _common.write_json(
    name,
    {
      "settings": {
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "bytes_per_param": BYTES_PER_PARAM,
        "quick": args.quick,
        "baseline": "optax.sgd",
      },
      "bandwidth_limit": {
        "kernel": limit_kernel,
        "gb_per_s": limit_gbs,
        "elements": BANDWIDTH_ELEMENTS,
        "kernels": limit,
      },
      "cases": results,
    },
    env,
  )
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
