"""nag_optax.parallel: every path equals one device on the full batch; one
gradient reduction per optimizer step, read from the compiled programs; ZeRO-1
holds 1/n of the state per device; checkpoints resume exactly."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import parallel
from nag_optax.parallel import collectives
from tests import toy_regression as toy

N_DEVICES = 8
K, STEPS, ROWS = toy.K, toy.STEPS, toy.ROWS
MICRO = 4  # in-step micro-batches: one row each of a device's four

# Float64 comparisons: the paths sum in other orders than one device does,
# so they agree to rounding, not bit for bit. 1e-12 relative is thousands of
# float64 ulps and far below any algorithmic difference (a missing or
# doubled reduction, a wrong micro-batch split, an extra update or model
# state sync is 1e-3 or more here).
RTOL, ATOL = 1e-12, 1e-14

PATHS = {
  # name: (builder, zero1)
  "pmap": ("pmap", False),
  "jit": ("jit", False),
  "jit ZeRO-1": ("jit", True),
}


@pytest.fixture(scope="module", autouse=True)
def float64():
  assert jax.local_device_count() == N_DEVICES, "conftest forces 8 CPU devices"
  with jax.enable_x64(True):
    yield


def loss_with_state(params, batch, model_state):
  """A BatchNorm-like running mean of the inputs and a call counter, and the
  mean absolute error as auxiliary output."""
  x, y = batch
  new = {
    "mean": 0.9 * model_state["mean"] + 0.1 * jnp.mean(x, axis=0),
    "count": model_state["count"] + 1,
  }
  mae = jnp.mean(jnp.abs(toy.predict(params, x) - y))
  return toy.loss_fn(params, batch), (new, {"mae": mae})


def _model_state():
  return {"mean": jnp.zeros(4, jnp.float64), "count": jnp.zeros([], jnp.int32)}


def _build(path, loss, tx, *, micro_batches, has_aux=False):
  builder, zero1 = PATHS[path]
  kwargs = {"micro_batches": micro_batches, "has_aux": has_aux}
  if builder == "pmap":
    return parallel.pmap_data_parallel(loss, tx, **kwargs)
  return parallel.jit_data_parallel(
    loss, tx, parallel.data_mesh(), zero1=zero1, **kwargs
  )


def _accumulate(inner):
  return nag_optax.accumulate_gradients(inner, K, accumulator_dtype=jnp.float64)


def _reference_model_state(micro_batches):
  """The running mean on one device: each device's micro-batch i is one
  consecutive slice of its rows, and averaging the replicas once per step
  equals updating with the mean over every device's slice i (the update is
  linear in the batch mean)."""
  x, _ = toy.data(np.float64)
  mean = np.zeros(4)
  for step in x:
    slices = step.reshape(N_DEVICES, micro_batches, -1, 4)
    for i in range(micro_batches):
      mean = 0.9 * mean + 0.1 * slices[:, i].mean(axis=(0, 1))
  return {"mean": mean, "count": np.asarray(STEPS * micro_batches)}


def _reference_metrics(params, micro_batches):
  """Per device, the loss and error of the last call at ``params``, each the
  mean over that device's micro-batches."""
  x, y = (
    a[-1].reshape(N_DEVICES, micro_batches, -1, a.shape[-1])
    for a in toy.data(np.float64)
  )
  loss = jax.vmap(jax.vmap(lambda x, y: toy.loss_fn(params, (x, y))))(x, y)
  mae = jax.vmap(jax.vmap(lambda x, y: jnp.mean(jnp.abs(toy.predict(params, x) - y))))(
    x, y
  )
  return np.mean(loss, axis=1), np.mean(mae, axis=1)


def _close(a, b):
  chex.assert_trees_all_close(a, b, rtol=RTOL, atol=ATOL)


def _run(dp, with_state):
  """Every call on the toy data; the final state and the last metrics."""
  x, y = toy.data(np.float64)
  state = dp.init(toy.init_params(jnp.float64), _model_state() if with_state else None)
  for batch in zip(x, y, strict=True):
    state, metrics = dp.step(state, dp.shard_batch(batch))
  return state, metrics


VARIANTS = ["plain", "model state and aux", "accumulate_gradients and model state"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("micro_batches", [1, MICRO])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_equals_one_device_on_the_full_batch(path, micro_batches, variant):
  accumulating = variant.startswith("accumulate")
  with_state = variant != "plain"
  has_aux = variant == "model state and aux"
  loss = loss_with_state if with_state else toy.loss_fn
  if with_state and not has_aux:
    loss = lambda p, b, s: (lambda out: (out[0], out[1][0]))(loss_with_state(p, b, s))
  tx = _accumulate(toy.inner()) if accumulating else toy.inner()
  chex.clear_trace_counter()
  dp = _build(
    path,
    chex.assert_max_traces(loss, n=1),
    tx,
    micro_batches=micro_batches,
    has_aux=has_aux,
  )
  state, metrics = _run(dp, with_state)

  every_k = K if accumulating else 1
  reference = toy.reference_params(every_k, np.float64)
  _close(dp.to_host(state.params), reference)
  for leaf in jax.tree.leaves(state.params):
    if path == "pmap":  # replicas identical
      np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
    else:
      assert leaf.sharding.is_fully_replicated
  if with_state:
    host = dp.to_host(state)
    got = host.model_state
    if accumulating:  # device-local between emitted steps: one row each
      assert got["mean"].shape == (N_DEVICES, 4)
      np.testing.assert_array_equal(
        got["mean"], np.broadcast_to(got["mean"][0], (N_DEVICES, 4))
      )
      got = jax.tree.map(lambda a: a[0], got)
    _close(got, _reference_model_state(micro_batches))
  # Metrics: one value per device, each the mean over its micro-batches, at
  # the parameters the last call started from.
  assert np.shape(metrics["loss"]) == (N_DEVICES,)
  before_last = _params_before_last_call(every_k)
  ref_loss, ref_mae = _reference_metrics(before_last, micro_batches)
  _close(np.asarray(metrics["loss"]), ref_loss)
  if has_aux:
    _close(np.asarray(metrics["aux"]["mae"]), ref_mae)


def _params_before_last_call(every_k):
  """The reference trajectory's parameters before its last call (that of
  toy.reference_params)."""
  if every_k == 1:
    tx = toy.inner()
  else:
    tx = optax.MultiSteps(toy.inner(), every_k, accumulator_dtype=jnp.float64)
  params = toy.init_params(jnp.float64)
  state = tx.init(params)
  x, y = toy.data(np.float64)
  for batch in list(zip(x, y, strict=True))[:-1]:
    updates, state = tx.update(jax.grad(toy.loss_fn)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  return params


# ---------------------------------------------------------------------------
# Where the collectives are, read from the compiled programs.


def _param_bytes(dtype_bytes=8):
  return sum(np.size(x) for x in jax.tree.leaves(toy.init_params())) * dtype_bytes


SPLITTABLE = ("w1", "b1", "w2")  # b2 (1 element) cannot be split 8 ways
MODEL_STATE_BYTES = 4 * 8 + 4  # the float64 mean and the int32 counter


@pytest.mark.parametrize("accumulating", [False, True], ids=["in-step", "per call"])
@pytest.mark.parametrize("path", list(PATHS))
def test_one_gradient_reduction_per_step_none_in_the_loop_or_on_micro_steps(
  path, accumulating
):
  loss = lambda p, b, s: (lambda out: (out[0], out[1][0]))(loss_with_state(p, b, s))
  tx = _accumulate(toy.inner()) if accumulating else toy.inner()
  dp = _build(path, loss, tx, micro_batches=MICRO)
  x, y = toy.data(np.float64)
  state = dp.init(toy.init_params(jnp.float64), _model_state())
  found = collectives(
    dp.step.lower(state, dp.shard_batch((x[0], y[0]))).compile().as_text()
  )

  assert not any(c.in_loop for c in found)  # none inside the micro-batch loop
  # Per call (accumulate_gradients): all in the emitting branch (1), none on
  # micro-steps (outside the conditional or in its pass-through branch 0).
  expected_branch = 1 if accumulating else None
  assert {c.branch for c in found} == {expected_branch}

  params = toy.init_params()
  param_bytes = _param_bytes()
  splittable = sum(np.size(params[k]) for k in SPLITTABLE) * 8
  by_op = lambda op: [c.input_bytes for c in found if c.op == op]
  assert {c.dtype for c in found if c.op in ("all-reduce", "reduce-scatter")} <= {
    "f64",
    "s32",
  }
  if PATHS[path][1]:  # ZeRO-1: reduce-scatter to the shards, all-gather back
    assert len(by_op("reduce-scatter")) == len(SPLITTABLE)
    assert sum(by_op("reduce-scatter")) == splittable
    assert sum(by_op("all-gather")) * N_DEVICES == splittable
    reduced = splittable + sum(by_op("all-reduce"))
  else:
    assert not by_op("reduce-scatter") and not by_op("all-gather")
    reduced = sum(by_op("all-reduce"))
  # The gradient once, the model state once, and at most the loss (a
  # scalar, for the optimizer's value=) besides: never a second gradient.
  assert (
    param_bytes + MODEL_STATE_BYTES <= reduced <= param_bytes + MODEL_STATE_BYTES + 8
  )


def test_the_collective_reader_sees_a_reduction_every_micro_step():
  """The checks above fail for the usual pmean-then-optax.MultiSteps step."""
  dp = parallel.pmap_data_parallel(toy.loss_fn, optax.MultiSteps(toy.inner(), K))
  x, y = toy.data(np.float64)
  state = dp.init(toy.init_params(jnp.float64))
  found = collectives(
    dp.step.lower(state, dp.shard_batch((x[0], y[0]))).compile().as_text()
  )
  assert {c.branch for c in found} == {None}
  assert sum(c.input_bytes for c in found) >= _param_bytes()


# ---------------------------------------------------------------------------
# ZeRO-1 memory, checkpoints, errors.


@pytest.mark.parametrize("accumulating", [False, True], ids=["in-step", "per call"])
def test_zero1_holds_one_nth_of_the_optimizer_state_per_device(accumulating):
  builder = "jit"
  tx = _accumulate(toy.inner()) if accumulating else toy.inner()
  path = f"{builder} ZeRO-1"
  dp = _build(path, toy.loss_fn, tx, micro_batches=MICRO)
  state, _ = _run(dp, with_state=False)
  replicated, _ = _run(_build(builder, toy.loss_fn, tx, micro_batches=MICRO), False)
  _close(dp.to_host(state.params), dp.to_host(replicated.params))

  def bytes_on(device, tree):
    return sum(
      shard.data.nbytes
      for leaf in jax.tree.leaves(tree)
      for shard in leaf.addressable_shards
      if shard.device == device
    )

  nesterov_state = state.opt_state.inner_opt_state if accumulating else state.opt_state
  trace = nesterov_state.trace
  total = sum(leaf.nbytes for leaf in jax.tree.leaves(trace))
  for device in jax.devices():  # b2 (8 bytes) stays replicated
    assert bytes_on(device, trace) == (total - 8) // N_DEVICES + 8
  if accumulating:  # the accumulator is device-local: one copy per device
    acc = state.opt_state.acc_grads
    assert bytes_on(jax.devices()[0], acc) == total
  for leaf in jax.tree.leaves(state.params):
    assert leaf.sharding.is_fully_replicated


@pytest.mark.parametrize("path", list(PATHS))
def test_resuming_mid_cycle_from_a_host_copy_continues_exactly(path):
  loss = lambda p, b, s: (lambda out: (out[0], out[1][0]))(loss_with_state(p, b, s))
  chex.clear_trace_counter()  # resumed or not, the step traces once
  dp = _build(
    path, chex.assert_max_traces(loss, n=1), _accumulate(toy.inner()), micro_batches=2
  )
  x, y = toy.data(np.float64)
  batches = [dp.shard_batch(b) for b in zip(x, y, strict=True)]
  state = dp.init(toy.init_params(jnp.float64), _model_state())
  for batch in batches[:3]:  # three calls: one emitted step, one micro-step
    state, _ = dp.step(state, batch)
  assert not bool(np.asarray(dp.to_host(state).opt_state.emitted))
  host = dp.to_host(state)
  assert isinstance(host, parallel.TrainState)
  # Every device's partial sum and model state are kept.
  acc = host.opt_state.acc_grads["w1"]
  assert acc.shape == (N_DEVICES, 4, 16) and not np.allclose(acc[0], acc[1])
  assert host.model_state["mean"].shape == (N_DEVICES, 4)
  assert not np.allclose(host.model_state["mean"][0], host.model_state["mean"][1])

  resumed = dp.from_host(jax.tree.map(np.copy, host))
  for leaf, ref in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
    assert leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
  chex.assert_trees_all_equal(dp.to_host(resumed), host)
  state, _ = dp.step(state, batches[3])
  resumed, _ = dp.step(resumed, batches[3])
  chex.assert_trees_all_equal(dp.to_host(resumed), dp.to_host(state))
  assert int(nag_optax.accumulation_gradient_step(dp.to_host(resumed).opt_state)) == 2


@pytest.mark.parametrize("path", ["jit ZeRO-1", "jit"])
def test_orbax_saves_and_restores_the_sharded_state_directly(path, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  loss = lambda p, b, s: (lambda out: (out[0], out[1][0]))(loss_with_state(p, b, s))
  dp = _build(path, loss, _accumulate(toy.inner()), micro_batches=2)
  x, y = toy.data(np.float64)
  batches = [dp.shard_batch(b) for b in zip(x, y, strict=True)]
  params, model_state = toy.init_params(jnp.float64), _model_state()
  state = dp.init(params, model_state)
  for batch in batches[:3]:  # mid-cycle
    state, _ = dp.step(state, batch)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    target = dp.abstract_state(params, model_state)
    restored = parallel.TrainState(*checkpointer.restore(tmp_path / "ckpt", target))
  for leaf, ref in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
  state, _ = dp.step(state, batches[3])
  restored, _ = dp.step(restored, batches[3])
  chex.assert_trees_all_equal(dp.to_host(restored), dp.to_host(state))


def test_abstract_state_matches_init():
  for path in PATHS:
    dp = _build(path, toy.loss_fn, _accumulate(toy.inner()), micro_batches=1)
    params = toy.init_params(jnp.float64)
    state = dp.init(params)
    abstract = dp.abstract_state(params)
    for leaf, shape in zip(
      jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True
    ):
      assert (leaf.shape, leaf.dtype) == (shape.shape, shape.dtype)
      assert leaf.sharding.is_equivalent_to(shape.sharding, leaf.ndim)


def test_from_host_rejects_other_trees_and_device_counts():
  dp = _build("pmap", toy.loss_fn, _accumulate(toy.inner()), micro_batches=1)
  host = dp.to_host(dp.init(toy.init_params(jnp.float64)))
  with pytest.raises(TypeError, match="takes a TrainState"):
    dp.from_host(tuple(host))
  fewer = host._replace(
    opt_state=host.opt_state._replace(
      acc_grads=jax.tree.map(lambda a: a[:4], host.opt_state.acc_grads)
    )
  )
  with pytest.raises(ValueError, match=r"one row per device \(8\)"):
    dp.from_host(fewer)


@pytest.mark.parametrize("path", ["pmap", "jit"])
def test_a_batch_that_micro_batches_do_not_divide_is_a_clear_error(path):
  dp = _build(path, toy.loss_fn, toy.inner(), micro_batches=3)
  state = dp.init(toy.init_params(jnp.float64))
  x, y = toy.data(np.float64)
  with pytest.raises(ValueError, match=r"micro_batches=3 must divide.*has 4 rows"):
    dp.step(state, dp.shard_batch((x[0], y[0])))


def test_construction_errors():
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match="micro_batches"):
      parallel.jit_data_parallel(toy.loss_fn, toy.inner(), micro_batches=bad)
  for builder in (parallel.pmap_data_parallel, parallel.jit_data_parallel):
    for bad in ("int32", jnp.int8, "not a dtype", jnp.complex64):
      with pytest.raises(ValueError, match="reduce_dtype must be a floating"):
        builder(toy.loss_fn, toy.inner(), reduce_dtype=bad)
  with pytest.raises(ValueError, match="devices is empty"):
    parallel.pmap_data_parallel(toy.loss_fn, toy.inner(), devices=[])
  with pytest.raises(ValueError, match="one-axis"):
    parallel.jit_data_parallel(
      toy.loss_fn, toy.inner(), jax.make_mesh((4, 2), ("a", "b"))
    )


def test_accumulate_gradients_with_its_own_axis_name_gives_the_same_steps():
  """accumulate_gradients(..., axis_name=...) passed to a builder: the
  builder's one reduction, and the same parameters as one device."""
  tx = nag_optax.accumulate_gradients(
    toy.inner(), K, axis_name="batch", accumulator_dtype=jnp.float64
  )
  dp = parallel.pmap_data_parallel(toy.loss_fn, tx)
  state, _ = _run(dp, with_state=False)
  _close(dp.to_host(state.params), toy.reference_params(K, np.float64))


# ---------------------------------------------------------------------------
# Placement helpers, the launcher's arguments, the module docstring.


def test_replicate_then_step_traces_once_and_unreplicate_reads_locally():
  traces = []

  def step(params):
    traces.append(1)
    return jax.tree.map(lambda p: p + 1.0, params)

  step = jax.pmap(step, axis_name="batch")
  params = parallel.replicate(toy.init_params(), axis_name="batch")
  for _ in range(3):
    params = step(params)
  assert len(traces) == 1
  chex.assert_trees_all_close(
    parallel.unreplicate(params), jax.tree.map(lambda p: p + 3.0, toy.init_params())
  )
  assert parallel.unreplicate(params)["w1"].shape == (4, 16)


def test_split_batch_shapes_and_errors():
  split = parallel.split_batch({"x": np.zeros((16, 3)), "y": np.zeros(16)})
  assert split["x"].shape == (N_DEVICES, 2, 3) and split["y"].shape == (N_DEVICES, 2)
  with pytest.raises(ValueError, match=r"\['x'\].*divisible by the 8 local"):
    parallel.split_batch({"x": np.zeros((12, 3))})
  mesh = parallel.data_mesh()
  with pytest.raises(ValueError, match="divisible by this process's 8"):
    parallel.global_batch(np.zeros((12, 3)), mesh)


def test_zero1_shardings_rule():
  mesh = parallel.data_mesh()
  tree = {
    "a": jax.ShapeDtypeStruct((4, 16), jnp.float32),
    "b": jax.ShapeDtypeStruct((), jnp.int32),
    "c": jax.ShapeDtypeStruct((3, 5), jnp.float32),
  }
  specs = jax.tree.map(lambda s: s.spec, parallel.zero1_shardings(tree, mesh))
  assert specs == {
    "a": jax.sharding.PartitionSpec(None, "data"),
    "b": jax.sharding.PartitionSpec(),
    "c": jax.sharding.PartitionSpec(None, None),
  }
  with pytest.raises(ValueError, match="one-axis"):
    parallel.zero1_shardings(tree, jax.make_mesh((4, 2), ("a", "b")))


def test_launcher_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_processes"):
    parallel.launch_local(["true"], num_processes=0)
  with pytest.raises(ValueError, match="local_devices"):
    parallel.launch_local(["true"], local_devices=1.5)
  assert parallel.initialize() is False  # not launched by launch_local


def test_module_docstring_example_runs():
  doc = parallel.__doc__
  block = doc.split("Example (8 local devices, 4 micro-batches per step)::\n", 1)[1]
  block = block.split("\nSeveral hosts:", 1)[0]
  code = "\n".join(line[2:] for line in block.splitlines())
  rng = np.random.default_rng(3)
  batches = [
    (rng.normal(size=(32, 5)).astype(np.float32), np.ones((32, 1), np.float32))
    for _ in range(2)
  ]
  namespace = {"host_batches": batches}
  with jax.enable_x64(False):
    exec(compile(code, "parallel.__doc__", "exec"), namespace)
  # Two steps of four micro-batches moved w towards y = 1.
  assert namespace["params"]["w"].shape == (5, 1)
  assert np.any(namespace["params"]["w"] != 0.0)


# ---------------------------------------------------------------------------
# Static keyword arguments, the reduction dtype, pmap on given devices.


def _scaled_loss(params, batch, *, scale=1.0):
  return scale * toy.loss_fn(params, batch)


@pytest.mark.parametrize("path", ["pmap", "jit"])
def test_step_keyword_arguments_reach_the_loss_as_static_values(path):
  chex.clear_trace_counter()
  dp = _build(
    path, chex.assert_max_traces(_scaled_loss, n=2), toy.inner(), micro_batches=1
  )
  x, y = toy.data(np.float64)
  state = dp.init(toy.init_params(jnp.float64))
  scales = [1.0001 if i == 0 else 1.0 for i in range(len(x))]
  for scale, batch in zip(scales, zip(x, y, strict=True), strict=True):
    state, _ = dp.step(state, dp.shard_batch(batch), scale=scale)  # two traces

  tx = toy.inner()
  params = toy.init_params(jnp.float64)
  opt_state = tx.init(params)
  for scale, batch in zip(scales, zip(x, y, strict=True), strict=True):
    grads = jax.grad(_scaled_loss)(params, batch, scale=scale)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  _close(dp.to_host(state.params), params)


def _bf16_loss(params, batch):
  """The toy loss with its matrix products in bfloat16 (parameters float32)."""
  cast = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  x, y = batch
  return jnp.mean((toy.predict(cast, x.astype(jnp.bfloat16)) - y) ** 2)


def _reduction_dtypes(lowered_text):
  """Element types of the cross-device reductions of a lowered program
  (StableHLO, before XLA:CPU widens bfloat16 reductions to float32)."""
  found = re.findall(
    r'"stablehlo\.(?:all_reduce|reduce_scatter)".*?\}\) : \(([^)]*)\)',
    lowered_text,
    flags=re.S,
  )
  return {
    dtype for types in found for dtype in re.findall(r"(?:x|<)([a-z]+\d*)>", types)
  }


@pytest.mark.parametrize("path", ["pmap", "jit", "jit ZeRO-1"])
@pytest.mark.parametrize("reduce_dtype", [None, jnp.bfloat16], ids=["default", "bf16"])
def test_gradients_cross_devices_in_float32_unless_asked(path, reduce_dtype):
  builder, zero1 = PATHS[path]
  with jax.enable_x64(False):
    kwargs = {"reduce_dtype": reduce_dtype, "micro_batches": 2}
    if builder == "pmap":
      dp = parallel.pmap_data_parallel(_bf16_loss, toy.inner(), **kwargs)
    else:
      dp = parallel.jit_data_parallel(_bf16_loss, toy.inner(), zero1=zero1, **kwargs)
    x, y = toy.data(np.float32)
    state = dp.init(toy.init_params(jnp.float32))
    batch = dp.shard_batch((x[0], y[0]))
    lowered = dp.step.lower(state, batch)
    found = collectives(lowered.compile().as_text())
    state, _ = dp.step(state, batch)
  # The gradient's reductions in the asked dtype (the loss's in float32).
  dtypes = _reduction_dtypes(lowered.as_text())
  assert dtypes <= {"bf16", "f32"} and ("bf16" in dtypes) == bool(reduce_dtype)
  # Once: the float32 gradient's bytes (XLA:CPU reduces bfloat16 in float32)
  # and the loss besides, none in the micro-batch loop.
  reduced = [c for c in found if c.op in ("all-reduce", "reduce-scatter")]
  assert _param_bytes(4) <= sum(c.input_bytes for c in reduced) <= _param_bytes(4) + 4
  assert not any(c.in_loop for c in found)
  for leaf in jax.tree.leaves(dp.to_host(state.params)):
    assert leaf.dtype == np.float32 and np.all(np.isfinite(leaf))


def test_pmap_on_given_devices_equals_one_device():
  devices = jax.local_devices()[:4]
  dp = parallel.pmap_data_parallel(toy.loss_fn, toy.inner(), devices=devices)
  abstract = dp.abstract_state(toy.init_params(jnp.float64))
  for leaf in jax.tree.leaves(abstract):
    assert leaf.shape[0] == 4 and leaf.sharding.device_set == set(devices)
  state, _ = _run(dp, with_state=False)
  assert {s.device for s in jax.tree.leaves(state.params)[0].addressable_shards} == set(
    devices
  )
  _close(dp.to_host(state.params), toy.reference_params(1, np.float64))
