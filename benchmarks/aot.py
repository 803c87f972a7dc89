"""Every TPU and GPU program of the package and the example, compiled here.

    python benchmarks/aot.py --output DIR [--targets T ...] [--quick]

Compiles, on this CPU machine, with the vendors' own compilers (libtpu from
``jax[tpu]``; the CUDA plugin ``jax-cuda12-plugin`` + ``jax-cuda12-pjrt``,
whose XLA target specifications describe each GPU), for each target:

* ``parallel``: a 21M-parameter MLP through every data-parallel path
  (``pmap``, ``jit``, ``jit`` with ZeRO-1) at ``micro_batches`` 1 and 4,
  64 rows per device and micro-batch step;
* ``example``: the CIFAR-10 example's train step (``jit_data_parallel``
  with the example's loss, optimizer and BatchNorm over the mesh) and its
  evaluation step with 6-view TTA, with its GPU configuration
  (``configs/default.py``) on GPU targets and its TPU configuration
  (``configs/tpu.py``) on TPU targets;
* ``update``: the bare ``nag_optax.nesterov`` update and its application
  (donated) on one device at 10M, 100M and 1B parameters, float32 and
  bfloat16 momentum.

and writes ``DIR/aot.json``: per case the target, program, options, the
compile time, and :func:`nag_optax.parallel.compiled_summary` (per-device
argument/output/temp/peak bytes against the device's memory, each
collective with op, dtype, bytes and whether it sits in a loop or a branch,
FLOPs where the compiler gives them, and a lower bound on the step time
from the device's peak FLOP/s and memory bandwidth). Nothing here ran on an
accelerator: every figure is compiled, not run.

``--quick`` compiles a smaller set (TPU v5e 2x2 and 8 x H100; a 1M MLP,
the example at the smoke preset's widths, the update at 10M) at
``jax_optimization_level`` O0, in about a minute. Needs the accelerator
compilers of the installed jax version::

    pip install 'jax[tpu]==X' 'jax-cuda12-plugin==X' 'jax-cuda12-pjrt==X'
"""

import os

# Compile-only devices need no accelerator; the CPU backend runs the rest.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:
  import _common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import nag_optax  # noqa: E402
from nag_optax import parallel  # noqa: E402

TARGETS = ("tpu:v5e:4x4", "tpu:v5e:16x16", "tpu:v6e:2x2", "gpu:h100:8", "gpu:b200:8")
QUICK_TARGETS = ("tpu:v5e:2x2", "gpu:h100:8")
EXAMPLE_DIR = _common.REPO_ROOT / "examples" / "cifar10"


# --------------------------------------------------------------------------
# The programs.


def mlp_params(widths):
  return {
    f"w{i}": jax.ShapeDtypeStruct((a, b), jnp.float32)
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
  }


def mlp_loss(params, batch):
  """A tanh MLP in bfloat16 (float32 parameters), mean squared error."""
  x, y = batch
  h = x.astype(jnp.bfloat16)
  for name in sorted(params):
    h = jnp.tanh(h @ params[name].astype(jnp.bfloat16))
  return jnp.mean((h.astype(jnp.float32) - y) ** 2)


def parallel_cases(target, widths, rows):
  """(program, options, lower) for every path x zero1 x micro_batches."""
  n = len(target.devices)
  params = mlp_params(widths)
  tx = nag_optax.nesterov(0.1, 0.9)
  mesh = parallel.data_mesh(target.devices)
  sharded = parallel.batch_sharding(mesh)
  for micro_batches in (1, 4):
    global_rows = rows * micro_batches * n
    batch = tuple(
      jax.ShapeDtypeStruct((global_rows, w), jnp.float32, sharding=sharded)
      for w in (widths[0], widths[-1])
    )
    pmap_batch = tuple(
      jax.ShapeDtypeStruct((n, global_rows // n, w), jnp.float32)
      for w in (widths[0], widths[-1])
    )
    for path, zero1 in (("pmap", False), ("jit", False), ("jit", True)):
      options = {"path": path, "zero1": zero1, "micro_batches": micro_batches}
      if path == "pmap":
        dp = parallel.pmap_data_parallel(
          mlp_loss, tx, devices=target.devices, micro_batches=micro_batches
        )
        args = (dp.abstract_state(params), pmap_batch)
      else:
        dp = parallel.jit_data_parallel(
          mlp_loss, tx, mesh, zero1=zero1, micro_batches=micro_batches
        )
        args = (dp.abstract_state(params), batch)
      yield "parallel", options, functools.partial(dp.step.lower, *args)


def example_cases(target, preset, quick):
  """The example's train and eval steps with the target platform's preset."""
  if str(EXAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_DIR))
  import importlib

  import train

  config = importlib.import_module(f"configs.{preset}").get_config()
  if quick:
    config.widths = (16, 32, 32)
  mesh = parallel.data_mesh(target.devices)
  dp, graphdef, state, (images, labels) = train.abstract_train_step(config, mesh)
  sharded = parallel.batch_sharding(mesh)
  options = {
    "preset": preset,
    "batch_size": config.batch_size,
    "accum_steps": config.accum_steps,
    "compute_dtype": config.compute_dtype,
    "zero1": config.zero1,
    "widths": list(config.widths),
  }
  yield (
    "example train step",
    options,
    functools.partial(
      dp.step.lower, state, (images, labels), whiten_bias_trainable=True
    ),
  )
  evaluate = train.create_eval_step(config, mesh, graphdef, config.tta_level)
  eval_images = jax.ShapeDtypeStruct(
    (config.eval_batch_size, 32, 32, 3), jnp.float32, sharding=sharded
  )
  yield (
    "example eval step",
    dict(options, eval_batch_size=config.eval_batch_size, tta_level=config.tta_level),
    functools.partial(evaluate.lower, state.params, state.model_state, eval_images),
  )


def update_cases(target, sizes):
  """The bare optimizer update on one device, donated."""
  device = target.devices[0]
  mesh = parallel.data_mesh([device])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  leaf = 1 << 24  # at most 16.8M parameters per leaf, 1024 columns
  for size in sizes:
    shapes = [(min(leaf, size - i) // 1024, 1024) for i in range(0, size, leaf)]
    params = {
      f"p{i:03d}": jax.ShapeDtypeStruct(s, jnp.float32, sharding=replicated)
      for i, s in enumerate(shapes)
    }
    for momentum_dtype in ("float32", "bfloat16"):
      tx = nag_optax.nesterov(0.1, 0.9, accumulator_dtype=jnp.dtype(momentum_dtype))
      state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        jax.eval_shape(tx.init, params),
      )

      def step(params, state, grads, tx=tx):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      jitted = jax.jit(step, donate_argnums=(0, 1))
      options = {
        "parameters": sum(math.prod(s) for s in shapes),
        "momentum_dtype": momentum_dtype,
      }
      yield "update", options, functools.partial(jitted.lower, params, state, params)


# --------------------------------------------------------------------------
# The run.


def compile_case(target, program, options, lower):
  start = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as error:  # a TPU compile that does not fit fails here
    return {
      "target": target.name,
      "program": program,
      "options": options,
      "error": f"{type(error).__name__}: {str(error).splitlines()[0][:500]}",
      "compile_seconds": time.perf_counter() - start,
    }
  seconds = time.perf_counter() - start
  summary = parallel.compiled_summary(compiled, target)
  return {
    "target": target.name,
    "device_kind": target.devices[0].device_kind,
    "devices": len(target.devices),
    "program": program,
    "options": options,
    "compile_seconds": seconds,
    **summary,
  }


def traffic_ratios(cases):
  """ZeRO-1's collective traffic over plain jit's, per target and k."""
  plain = {
    (c["target"], c["options"]["micro_batches"]): c["traffic_bytes"]
    for c in cases
    if c["program"] == "parallel"
    and c["options"]["path"] == "jit"
    and not c["options"]["zero1"]
    and "error" not in c
  }
  out = []
  for c in cases:
    if c["program"] == "parallel" and c["options"]["zero1"] and "error" not in c:
      key = (c["target"], c["options"]["micro_batches"])
      out.append(
        {
          "target": key[0],
          "micro_batches": key[1],
          "zero1_traffic_bytes": c["traffic_bytes"],
          "plain_traffic_bytes": plain[key],
          "ratio": c["traffic_bytes"] / plain[key],
        }
      )
  return out


def compiler_versions():
  out = {}
  for name in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "jax-cuda12-pjrt"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", required=True, help="folder for aot.json")
  parser.add_argument("--targets", nargs="+", help="aot_target names")
  parser.add_argument("--quick", action="store_true", help="small, O0, two targets")
  parser.add_argument(
    "--programs",
    nargs="+",
    default=["parallel", "example", "update"],
    choices=["parallel", "example", "update"],
  )
  args = parser.parse_args(argv)
  if args.quick:
    jax.config.update("jax_optimization_level", "O0")
  targets = args.targets or (QUICK_TARGETS if args.quick else TARGETS)
  widths = [512, 512, 512] if args.quick else [2048] * 6
  sizes = [10_000_000] if args.quick else [10_000_000, 100_000_000, 1_000_000_000]
  env = dict(_common.environment(), compilers=compiler_versions())
  cases = []
  for name in targets:
    target = parallel.aot_target(name)
    generators = {
      "parallel": lambda: parallel_cases(target, widths, rows=64),
      "example": lambda: example_cases(
        target, "tpu" if target.platform == "tpu" else "default", args.quick
      ),
      "update": lambda: update_cases(target, sizes),
    }
    for program in args.programs:
      for kind, options, lower in generators[program]():
        case = compile_case(target, kind, options, lower)
        cases.append(case)
        memory = case.get("memory", {})
        print(
          f"{name:14} {kind:20} {json.dumps(options):80.80} "
          f"{case['compile_seconds']:6.1f} s  peak "
          f"{memory.get('peak_bytes', 0) / 2**20:9.1f} MiB  traffic "
          f"{case.get('traffic_bytes', 0) / 2**20:8.2f} MiB"
          + (f"  ERROR {case['error']}" if "error" in case else ""),
          flush=True,
        )
  payload = {
    "note": "compiled, not run: every figure is the compiler's, for devices "
    "this machine does not have",
    "optimization_level": "O0" if args.quick else "default",
    "targets": {
      name: {
        k: v for k, v in parallel.aot_target(name)._asdict().items() if k != "devices"
      }
      for name in targets
    },
    "zero1_traffic_ratios": traffic_ratios(cases),
    "cases": cases,
  }
  output = pathlib.Path(args.output)
  output.mkdir(parents=True, exist_ok=True)
  env = dict(env, load_average_end=_common.load_average())
  with open(output / "aot.json", "w", encoding="utf-8") as f:
    json.dump({"environment": env, **payload}, f, indent=1, default=str)
    f.write("\n")
  for row in payload["zero1_traffic_ratios"]:
    print(
      f"ZeRO-1 / plain traffic, {row['target']}, micro_batches "
      f"{row['micro_batches']}: {row['ratio']:.2f}"
    )
  print(f"wrote {output / 'aot.json'}")


if __name__ == "__main__":
  main()
