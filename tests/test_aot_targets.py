"""The data-parallel steps compiled for TPU slices and GPUs, on this CPU.

libtpu (``jax[tpu]``) and the CUDA plugin (``jax-cuda12-plugin``,
``jax-cuda12-pjrt``) compile for accelerators this machine does not have;
these tests read the compiled programs: one gradient reduction per optimizer
step, in float32, none inside the micro-batch loop or on a non-emitting
call; ZeRO-1's state 1/n per device and its traffic against plain data
parallelism's; the example's GPU and TPU configurations within the device's
memory. They skip where the compilers are not installed, unless
``NAG_OPTAX_REQUIRE_AOT=1`` (CI's ``accelerators`` leg) makes that a
failure. Structure only: compiled at ``jax_optimization_level`` O0.
"""

import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

import nag_optax
from nag_optax import parallel

TPU_TARGETS = ["tpu:v5e:4x4", "tpu:v6e:2x2"]
GPU_TARGETS = ["gpu:h100:8", "gpu:b200:8"]
WIDTHS = (256, 512, 256)  # every dimension divides 16 devices
ROWS = 32  # per device and micro-batch
MICRO = 4
EXAMPLE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "cifar10")


def _installed(platform):
  module = "libtpu" if platform == "tpu" else "jax_plugins.xla_cuda12"
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # no jax_plugins package at all
    return False


def _require(platform):
  if _installed(platform):
    return
  if os.environ.get("NAG_OPTAX_REQUIRE_AOT") == "1":
    pytest.fail(f"the {platform} compiler is not installed (NAG_OPTAX_REQUIRE_AOT=1)")
  pytest.skip(f"the {platform} compiler is not installed")


@pytest.fixture(scope="module", autouse=True)
def o0():
  with jax.enable_x64(False):
    previous = jax.config.jax_optimization_level
    jax.config.update("jax_optimization_level", "O0")
    yield
    jax.config.update("jax_optimization_level", previous)


_TARGETS = {}


def _target(name):
  _require(name.split(":")[0])
  if name not in _TARGETS:
    _TARGETS[name] = parallel.aot_target(name)
  return _TARGETS[name]


def _params():
  return {
    f"w{i}": jax.ShapeDtypeStruct((a, b), jnp.float32)
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True))
  }


PARAM_BYTES = 4 * sum(math.prod(p.shape) for p in jax.tree.leaves(_params()))


def _loss(params, batch):
  """An MLP computing in bfloat16, so that its raw gradient is bfloat16."""
  x, y = batch
  h = x.astype(jnp.bfloat16)
  for name in sorted(params):
    h = jnp.tanh(h @ params[name].astype(jnp.bfloat16))
  return jnp.mean((h.astype(jnp.float32) - y) ** 2)


def _compile(target, path, *, zero1=False, micro_batches=1, tx=None):
  tx = nag_optax.nesterov(0.1, 0.9) if tx is None else tx
  n = len(target.devices)
  rows = ROWS * micro_batches * n
  if path == "pmap":
    dp = parallel.pmap_data_parallel(
      _loss, tx, devices=target.devices, micro_batches=micro_batches
    )
    batch = tuple(
      jax.ShapeDtypeStruct((n, rows // n, w), jnp.float32) for w in WIDTHS[::2]
    )
  else:
    mesh = parallel.data_mesh(target.devices)
    dp = parallel.jit_data_parallel(
      _loss, tx, mesh, zero1=zero1, micro_batches=micro_batches
    )
    sharded = parallel.batch_sharding(mesh)
    batch = tuple(
      jax.ShapeDtypeStruct((rows, w), jnp.float32, sharding=sharded)
      for w in WIDTHS[::2]
    )
  state = dp.abstract_state(_params())
  compiled = dp.step.lower(state, batch).compile()
  return state, parallel.compiled_summary(compiled, target)


def _gradient_reductions(summary):
  """Reductions bigger than a few scalars (the loss is 4 bytes)."""
  return [
    c
    for c in summary["collectives"]
    if c["op"] in ("all-reduce", "reduce-scatter") and c["input_bytes"] > 64
  ]


@pytest.mark.parametrize("name", TPU_TARGETS + GPU_TARGETS)
@pytest.mark.parametrize("path", ["pmap", "jit", "jit ZeRO-1"])
@pytest.mark.parametrize("micro_batches", [1, MICRO])
def test_one_float32_gradient_reduction_per_step(name, path, micro_batches):
  target = _target(name)
  _, summary = _compile(
    target, path.split()[0], zero1="ZeRO" in path, micro_batches=micro_batches
  )
  reductions = _gradient_reductions(summary)
  assert reductions and {c["dtype"] for c in reductions} == {"f32"}
  assert not any(c["in_loop"] for c in summary["collectives"])
  # The gradient once (compilers split or combine it, and may pad a leaf).
  reduced = sum(c["input_bytes"] for c in reductions)
  assert PARAM_BYTES <= reduced <= 1.1 * PARAM_BYTES


@pytest.mark.parametrize("name", TPU_TARGETS + GPU_TARGETS)
@pytest.mark.parametrize("path", ["pmap", "jit", "jit ZeRO-1"])
def test_accumulate_gradients_reduces_only_on_the_emitting_call(name, path):
  target = _target(name)
  tx = nag_optax.accumulate_gradients(nag_optax.nesterov(0.1, 0.9), MICRO)
  _, summary = _compile(target, path.split()[0], zero1="ZeRO" in path, tx=tx)
  reductions = _gradient_reductions(summary)
  assert reductions and {c["branch"] for c in reductions} == {1}
  assert {c["dtype"] for c in reductions} == {"f32"}
  assert PARAM_BYTES <= sum(c["input_bytes"] for c in reductions) <= 1.1 * PARAM_BYTES


@pytest.mark.parametrize("name", TPU_TARGETS + GPU_TARGETS)
def test_bfloat16_reduction_when_asked(name):
  target = _target(name)
  mesh = parallel.data_mesh(target.devices)
  dp = parallel.jit_data_parallel(
    _loss, nag_optax.nesterov(0.1, 0.9), mesh, reduce_dtype=jnp.bfloat16
  )
  sharded = parallel.batch_sharding(mesh)
  n = len(target.devices)
  batch = tuple(
    jax.ShapeDtypeStruct((ROWS * n, w), jnp.float32, sharding=sharded)
    for w in WIDTHS[::2]
  )
  compiled = dp.step.lower(dp.abstract_state(_params()), batch).compile()
  reductions = _gradient_reductions(parallel.compiled_summary(compiled, target))
  assert {c["dtype"] for c in reductions} == {"bf16"}
  reduced = sum(c["input_bytes"] for c in reductions)
  assert PARAM_BYTES / 2 <= reduced <= 1.1 * PARAM_BYTES / 2


# libtpu compiles some reduce-scatters as an all-reduce followed by a slice
# (on a v5e slice larger than 2x2 every one of them; on v6e and v5e 2x2 some
# leaves, depending on their shape): on the slices tested here ZeRO-1 then
# moves at most an all-reduce plus the all-gather, 1.5x plain data
# parallelism, as the documentation states. XLA:GPU keeps the reduce-scatter
# and ZeRO-1 moves no more than plain data parallelism.
ZERO1_TRAFFIC_LIMIT = {"tpu": 1.5, "gpu": 1.0}


@pytest.mark.parametrize("name", TPU_TARGETS + GPU_TARGETS)
def test_zero1_holds_one_nth_of_the_state_and_moves_no_more_than_plain(name):
  target = _target(name)
  n = len(target.devices)
  state, zero1 = _compile(target, "jit", zero1=True)
  _, plain = _compile(target, "jit")
  for leaf in jax.tree.leaves(state.opt_state.trace):
    shard = leaf.sharding.shard_shape(leaf.shape)
    assert math.prod(shard) * n == math.prod(leaf.shape)
  limit = ZERO1_TRAFFIC_LIMIT[target.platform]
  assert zero1["traffic_bytes"] <= limit * plain["traffic_bytes"] + 1024
  assert zero1["memory"]["argument_bytes"] < plain["memory"]["argument_bytes"]


@pytest.mark.parametrize(
  "name, preset", [("gpu:h100:8", "default"), ("tpu:v5e:4x4", "tpu")]
)
def test_the_example_fits_the_device_with_its_batch_size(name, preset):
  target = _target(name)
  sys.path.insert(0, os.path.abspath(EXAMPLE_DIR))
  try:
    import importlib

    import train

    config = importlib.import_module(f"configs.{preset}").get_config()
  finally:
    sys.path.pop(0)
  mesh = parallel.data_mesh(target.devices)
  dp, _, state, batch = train.abstract_train_step(config, mesh)
  compiled = dp.step.lower(state, batch, whiten_bias_trainable=True).compile()
  summary = parallel.compiled_summary(compiled, target)
  assert summary["fits"], summary["memory"]
  reductions = _gradient_reductions(summary)
  param_bytes = 4 * sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))
  assert {c["dtype"] for c in reductions} == {"f32"}
  assert not any(c["in_loop"] for c in reductions)
  assert param_bytes <= sum(c["input_bytes"] for c in reductions) <= 1.1 * param_bytes
