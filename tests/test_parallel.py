"""nag_optax.parallel: pmap and jit(NamedSharding) steps equal one device on
the full batch; replicas agree; ZeRO-1 holds 1/n of the state per device."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import parallel
from tests import toy_regression as toy
from tests.hlo_collectives import collective_placement

N_DEVICES = 8
K, STEPS = toy.K, toy.STEPS
X, Y = toy.data()
_params = toy.init_params
loss_fn = toy.loss_fn
_inner = toy.inner


def loss_with_state(params, batch, model_state):
  """A BatchNorm-like running mean of the inputs, updated every call."""
  x, _ = batch
  new = {"mean": 0.9 * model_state["mean"] + 0.1 * jnp.mean(x, axis=0)}
  return loss_fn(params, batch), new


@pytest.fixture(scope="module")
def reference():
  """One device, full batch, optax.MultiSteps; and the model state's EMA."""
  mean = np.zeros(4, np.float32)
  for x in X:
    mean = 0.9 * mean + 0.1 * x.mean(axis=0)
  return toy.reference_params(), {"mean": mean}


def _assert_replicas_identical(tree):
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


def _close(a, b):
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "wrap",
  [lambda tx: tx, optax.chain],
  ids=["applied in the emitting branch", "in optax.chain: update then apply"],
)
def test_pmap_accumulating_once_per_emitted_step_equals_one_device(reference, wrap):
  assert jax.local_device_count() == N_DEVICES, "conftest forces 8 CPU devices"
  tx = wrap(nag_optax.accumulate_gradients(_inner(), K, axis_name="batch"))
  chex.clear_trace_counter()
  dp = parallel.pmap_data_parallel(
    chex.assert_max_traces(loss_with_state, n=1), tx, reduce_gradients=False
  )
  state = dp.init(_params(), {"mean": jnp.zeros(4)})
  for i, (x, y) in enumerate(zip(X, Y, strict=True)):
    state, metrics = dp.step(state, dp.shard_batch((x, y)))
    assert metrics["loss"].shape == (N_DEVICES,)  # per device, no collective
    if i % K == 0:  # a micro-step: the model state is device-local until emit
      assert not np.allclose(*np.asarray(state.model_state["mean"])[:2])
  _assert_replicas_identical(state.params)
  # All of the optimizer state but the device-local accumulator.
  is_acc = lambda x: isinstance(x, nag_optax.AccumulateGradientsState)
  (acc_state,) = [
    x for x in jax.tree.leaves(state.opt_state, is_leaf=is_acc) if is_acc(x)
  ]
  _assert_replicas_identical(acc_state._replace(acc_grads=()))
  _assert_replicas_identical(state.model_state)
  ref_params, ref_model_state = reference
  _close(dp.to_host(state.params), ref_params)
  _close(dp.to_host(state.model_state), ref_model_state)
  assert int(dp.to_host(nag_optax.accumulation_gradient_step(state.opt_state))) == 2


def test_pmap_reducing_every_step_with_multisteps_equals_one_device(reference):
  dp = parallel.pmap_data_parallel(
    loss_fn, optax.MultiSteps(_inner(), K), axis_name="data"
  )
  state = dp.init(_params())
  for x, y in zip(X, Y, strict=True):
    state, _ = dp.step(state, dp.shard_batch((x, y)))
  _assert_replicas_identical(state.params)
  _close(dp.to_host(state.params), reference[0])


def test_pmap_without_any_gradient_reduction_is_an_error():
  dp = parallel.pmap_data_parallel(loss_fn, _inner(), reduce_gradients=False)
  state = dp.init(_params())
  with pytest.raises(ValueError, match="averages gradients"):
    dp.step(state, dp.shard_batch((X[0], Y[0])))


def test_replicate_then_step_traces_once_and_unreplicate_reads_locally():
  traces = []

  def step(params):
    traces.append(1)
    return jax.tree.map(lambda p: p + 1.0, params)

  step = jax.pmap(step, axis_name="batch")
  params = parallel.replicate(_params(), axis_name="batch")
  for _ in range(3):
    params = step(params)
  assert len(traces) == 1
  chex.assert_trees_all_close(
    parallel.unreplicate(params), jax.tree.map(lambda p: p + 3.0, _params())
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


@pytest.fixture(scope="module")
def jit_runs():
  """jit over an 8-device mesh, replicated and ZeRO-1 optimizer state."""
  mesh = parallel.data_mesh()
  runs = {}
  for zero1 in (False, True):
    tx = nag_optax.accumulate_gradients(_inner(), K)
    chex.clear_trace_counter()  # each run's step must trace exactly once
    loss = chex.assert_max_traces(lambda *a: loss_with_state(*a), n=1)
    dp = parallel.jit_data_parallel(loss, tx, mesh, zero1=zero1)
    state = dp.init(_params(), {"mean": jnp.zeros(4)})
    trajectory = []
    for x, y in zip(X, Y, strict=True):
      state, _ = dp.step(state, dp.shard_batch((x, y)))
      trajectory.append(dp.to_host(state.params))
    runs[zero1] = (dp, state, trajectory)
  return runs


def test_jit_sharded_step_equals_one_device(jit_runs, reference):
  dp, state, _ = jit_runs[False]
  _close(dp.to_host(state.params), reference[0])
  _close(dp.to_host(state.model_state), reference[1])
  for leaf in jax.tree.leaves(state.opt_state):
    assert leaf.sharding.is_fully_replicated


def test_zero1_holds_one_nth_of_the_state_per_device_and_same_trajectory(jit_runs):
  _, state, trajectory = jit_runs[True]
  _, replicated_state, replicated_trajectory = jit_runs[False]
  for a, b in zip(trajectory, replicated_trajectory, strict=True):
    _close(a, b)

  def bytes_on(device, tree):
    return sum(
      shard.data.nbytes
      for leaf in jax.tree.leaves(tree)
      for shard in leaf.addressable_shards
      if shard.device == device
    )

  inner = state.opt_state.inner_opt_state
  for tree in (inner.trace, state.opt_state.acc_grads):
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(tree))
    # b2 (1 element) cannot be split 8 ways and stays replicated.
    for device in jax.devices():
      assert bytes_on(device, tree) == (total - 4) // N_DEVICES + 4
    assert not tree["w1"].sharding.is_fully_replicated
  assert bytes_on(jax.devices()[0], replicated_state.opt_state) > 4 * bytes_on(
    jax.devices()[0], state.opt_state
  )
  # Parameters stay replicated: the compiler gathered the updated shards.
  for leaf in jax.tree.leaves(state.params):
    assert leaf.sharding.is_fully_replicated


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
  block = block.split("\nData parallel on clusters", 1)[0]
  code = "\n".join(line[2:] for line in block.splitlines())
  rng = np.random.default_rng(3)
  batches = [
    (rng.normal(size=(16, 5)).astype(np.float32), np.ones((16, 1), np.float32))
    for _ in range(4)
  ]
  namespace = {"host_batches": batches}
  exec(compile(code, "parallel.__doc__", "exec"), namespace)
  # Four micro-batches made one emitted step that moved w towards y = 1.
  assert namespace["params"]["w"].shape == (5, 1)
  assert np.any(namespace["params"]["w"] != 0.0)


@pytest.fixture(scope="module")
def shard_map_run():
  tx = nag_optax.accumulate_gradients(_inner(), K, axis_name="data")
  chex.clear_trace_counter()
  dp = parallel.shard_map_data_parallel(
    chex.assert_max_traces(lambda *a: loss_with_state(*a), n=1),
    tx,
    parallel.data_mesh(),
    reduce_gradients=False,
  )
  state = dp.init(_params(), {"mean": jnp.zeros(4)})
  for x, y in zip(X, Y, strict=True):
    state, metrics = dp.step(state, dp.shard_batch((x, y)))
  # The same step without model state, to read its collectives.
  plain = parallel.shard_map_data_parallel(
    loss_fn, tx, parallel.data_mesh(), reduce_gradients=False
  )
  plain_state = plain.init(_params())
  batch = plain.shard_batch((X[0], Y[0]))
  hlo = plain.step.lower(plain_state, batch).compile().as_text()
  return dp, state, metrics, hlo


def test_shard_map_accumulating_once_per_emitted_step_equals_one_device(
  shard_map_run, reference
):
  dp, state, metrics, _ = shard_map_run
  assert metrics["loss"].shape == (N_DEVICES,)
  for leaf in jax.tree.leaves(state.params):
    assert leaf.sharding.is_fully_replicated
  acc = state.opt_state.acc_grads["w1"]
  assert acc.shape == (N_DEVICES, 4, 16)  # one device-local accumulator each
  _close(dp.to_host(state.params), reference[0])
  _close(dp.to_host(state.model_state), reference[1])


def test_shard_map_step_communicates_only_on_emitted_steps(shard_map_run):
  outside, branches = collective_placement(shard_map_run[3])
  assert outside == 0  # micro-steps communicate nothing
  assert all(per_branch[0] == 0 for per_branch in branches)  # no-op branches
  assert sum(per_branch[1] for per_branch in branches) >= 1  # the emitted step


def _data_parallel(path, loss=loss_with_state):
  """Each path's accumulating step with model state, as the tests above."""
  if path == "pmap":
    tx = nag_optax.accumulate_gradients(_inner(), K, axis_name="batch")
    return parallel.pmap_data_parallel(loss, tx, reduce_gradients=False)
  if path == "shard_map":
    tx = nag_optax.accumulate_gradients(_inner(), K, axis_name="data")
    return parallel.shard_map_data_parallel(
      loss, tx, parallel.data_mesh(), reduce_gradients=False
    )
  tx = nag_optax.accumulate_gradients(_inner(), K)
  return parallel.jit_data_parallel(
    loss, tx, parallel.data_mesh(), zero1=path == "jit ZeRO-1"
  )


@pytest.mark.parametrize("path", ["pmap", "shard_map", "jit", "jit ZeRO-1"])
def test_resuming_mid_cycle_from_a_host_copy_continues_exactly(path):
  chex.clear_trace_counter()  # resumed or not, the step traces once
  dp = _data_parallel(path, chex.assert_max_traces(lambda *a: loss_with_state(*a), n=1))
  batches = [dp.shard_batch(batch) for batch in zip(X, Y, strict=True)]
  state = dp.init(_params(), {"mean": jnp.zeros(4)})
  for batch in batches[:3]:  # three calls: one emitted step, one micro-step
    state, _ = dp.step(state, batch)
  assert not bool(dp.to_host(nag_optax.accumulation_emitted(state.opt_state)))
  host = dp.to_host(state)
  assert isinstance(host, parallel.TrainState)
  if path in ("pmap", "shard_map"):  # every device's partial sum is kept
    acc = host.opt_state.acc_grads["w1"]
    assert acc.shape == (N_DEVICES, 4, 16) and not np.allclose(acc[0], acc[1])
  if path == "pmap":  # and every device's model state, averaged on emit
    assert host.model_state["mean"].shape == (N_DEVICES, 4)

  resumed = dp.from_host(jax.tree.map(np.copy, host))
  for leaf, ref in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
    assert leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
  chex.assert_trees_all_equal(dp.to_host(resumed), host)
  state, _ = dp.step(state, batches[3])
  resumed, _ = dp.step(resumed, batches[3])
  chex.assert_trees_all_equal(dp.to_host(resumed), dp.to_host(state))
  assert int(dp.to_host(nag_optax.accumulation_gradient_step(resumed.opt_state))) == 2


def test_from_host_rejects_other_trees_and_device_counts():
  dp = _data_parallel("pmap")
  host = dp.to_host(dp.init(_params(), {"mean": jnp.zeros(4)}))
  with pytest.raises(TypeError, match="takes a TrainState"):
    dp.from_host(tuple(host))
  fewer = host._replace(
    opt_state=host.opt_state._replace(
      acc_grads=jax.tree.map(lambda a: a[:4], host.opt_state.acc_grads)
    )
  )
  with pytest.raises(ValueError, match=r"one row per device \(8\)"):
    dp.from_host(fewer)
