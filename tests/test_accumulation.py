"""accumulate_gradients: optax.MultiSteps' results, the inner update and the
cross-device mean only on emitted steps, under jit, pmap and shard_map."""

import copy
import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import nag_optax
from nag_optax import _accumulation
from nag_optax import parallel

N_DEVICES = 8
SCHEDULE = optax.linear_schedule(0.1, 0.02, transition_steps=4)


def _params():
  return {"w": jnp.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]]), "b": jnp.ones(2)}


def _loss(params, x):
  return jnp.mean((x @ params["w"] + params["b"] - 1.0) ** 2)


def _grads(seed, n):
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params()
    )
    for _ in range(n)
  ]


def _run(tx, grads, params=None):
  params = _params() if params is None else params
  update = jax.jit(tx.update)
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out, state, params


@pytest.mark.parametrize(
  "every_k, kwargs",
  [
    (3, {}),
    (3, {"use_grad_mean": False}),
    (lambda step: jnp.where(step < 2, 2, 3), {}),
  ],
  ids=["k=3", "sum", "k-schedule"],
)
def test_equals_multisteps_with_nesterov_and_a_schedule(every_k, kwargs):
  inner = nag_optax.nesterov(SCHEDULE, momentum=0.9, weight_decay=1e-2)
  grads = _grads(0, 13)
  ours, state, params = _run(
    nag_optax.accumulate_gradients(inner, every_k, **kwargs), grads
  )
  ref, ref_state, ref_params = _run(optax.MultiSteps(inner, every_k, **kwargs), grads)
  for a, b in zip(ours, ref, strict=True):
    chex.assert_trees_all_equal(a, b)
  chex.assert_trees_all_equal(state.inner_opt_state, ref_state.inner_opt_state)
  assert int(state.gradient_step) == int(ref_state.gradient_step)
  assert int(state.mini_step) == int(ref_state.mini_step)
  chex.assert_trees_all_equal(params, ref_params)
  # The inner schedule counted emitted steps, not micro-steps.
  assert int(state.inner_opt_state.count) == int(state.gradient_step) > 0
  # Mid-cycle the accumulators agree (right after an emitted step ours still
  # holds the applied cycle and optax's zeros: see the docstring).
  (extra,) = _grads(1, 1)
  _, state = nag_optax.accumulate_gradients(inner, every_k, **kwargs).update(
    extra, state, params
  )
  _, ref_state = optax.MultiSteps(inner, every_k, **kwargs).update(
    extra, ref_state, ref_params
  )
  assert int(state.mini_step) == int(ref_state.mini_step) > 0
  chex.assert_trees_all_equal(state.acc_grads, ref_state.acc_grads)


def test_micro_steps_emit_zeros_and_the_mean_is_applied_once():
  inner = nag_optax.nesterov(0.5, momentum=0.0)
  tx = nag_optax.accumulate_gradients(inner, 4)
  grads = _grads(1, 4)
  ours, state, _ = _run(tx, grads)
  for u in ours[:3]:
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
  mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *grads)
  chex.assert_trees_all_close(
    ours[3], jax.tree.map(lambda m: -0.5 * m, mean), rtol=1e-6
  )
  assert int(state.gradient_step) == 1 and int(state.mini_step) == 0


def _counting(inner, counter):
  """inner, with a host callback counting executed (not traced) updates."""

  def update(updates, state, params=None, **extra):
    jax.debug.callback(lambda: counter.append(1))
    return inner.update(updates, state, params, **extra)

  return optax.GradientTransformationExtraArgs(inner.init, update)


def test_inner_update_runs_only_on_emitted_steps():
  calls, ref_calls = [], []
  inner = nag_optax.nesterov(0.1)
  _run(nag_optax.accumulate_gradients(_counting(inner, calls), 4), _grads(2, 12))
  _run(optax.MultiSteps(_counting(inner, ref_calls), 4), _grads(2, 12))
  assert len(calls) == 3  # once per emitted step
  assert len(ref_calls) == 12  # optax.MultiSteps: every micro-step


def test_skip_not_finite_matches_multisteps():
  inner = nag_optax.nesterov(SCHEDULE, momentum=0.9)
  grads = _grads(3, 10)
  for i in (2, 5, 6):
    grads[i] = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads[i])
  kwargs = {"should_skip_update_fn": optax.skip_not_finite}
  ours, state, params = _run(nag_optax.accumulate_gradients(inner, 2, **kwargs), grads)
  ref, ref_state, ref_params = _run(optax.MultiSteps(inner, 2, **kwargs), grads)
  for a, b in zip(ours, ref, strict=True):
    chex.assert_trees_all_equal(a, b)
  chex.assert_trees_all_equal(params, ref_params)
  chex.assert_trees_all_equal(state.skip_state, ref_state.skip_state)
  assert int(state.gradient_step) == int(ref_state.gradient_step) == 3
  assert np.all(np.isfinite(jax.tree.leaves(params)[0]))


@pytest.mark.parametrize(
  "kwargs",
  [{}, {"use_grad_mean": False}, {"should_skip_update_fn": optax.skip_not_finite}],
  ids=["mean", "sum", "skip_not_finite"],
)
def test_update_and_apply_equals_update_then_apply_updates(kwargs):
  tx = nag_optax.accumulate_gradients(
    nag_optax.nesterov(SCHEDULE, momentum=0.9), 3, **kwargs
  )
  assert isinstance(tx, nag_optax.AccumulateGradients)
  grads = _grads(9, 9)
  grads[4] = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads[4])

  @jax.jit
  def update_then_apply(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, ref_params = _params(), _params()
  state, ref_state = tx.init(params), tx.init(params)
  fused = jax.jit(tx.update_and_apply)
  for g in grads:
    new_params, state = fused(g, state, params)
    ref_params, ref_state = update_then_apply(g, ref_state, ref_params)
    # XLA:CPU contracts p + lr * x into one fused multiply-add when update
    # and application share a fusion: last-bit differences, not more.
    chex.assert_trees_all_close(new_params, ref_params, rtol=4e-7, atol=1e-7)
    chex.assert_trees_all_equal(state, ref_state)
    assert bool(tx.has_updated(state)) == bool(nag_optax.accumulation_emitted(state))
    if not tx.has_updated(state):  # untouched on micro-steps
      chex.assert_trees_all_equal(new_params, params)
    params = new_params
  assert int(state.gradient_step) == (2 if "should_skip_update_fn" in kwargs else 3)


def test_accumulate_then_emit_is_update():
  """The two public halves, composed as the docstring says, give update."""
  inner = nag_optax.nesterov(SCHEDULE, momentum=0.9, weight_decay=1e-2)
  tx = nag_optax.accumulate_gradients(inner, 3)

  @jax.jit
  def halves(grads, state, params):
    state, emitting = tx.accumulate(grads, state, params)

    def on_emit(state):
      mean = jax.tree.map(lambda a, g: a.astype(g.dtype), state.acc_grads, grads)
      return tx.emit(mean, state, params)

    def on_micro(state):
      return jax.tree.map(jnp.zeros_like, grads), state

    return jax.lax.cond(emitting, on_emit, on_micro, state)

  ours, state, _ = _run(
    optax.GradientTransformationExtraArgs(tx.init, halves), _grads(10, 7)
  )
  ref, ref_state, _ = _run(tx, _grads(10, 7))
  for a, b in zip(ours, ref, strict=True):
    chex.assert_trees_all_equal(a, b)
  chex.assert_trees_all_equal(state, ref_state)
  assert tx.inner is not None and tx.axis_name is None


def test_an_optax_transformation_that_replace_and_copy_keep_whole():
  """AccumulateGradients is the pair (init, update), an
  optax.GradientTransformationExtraArgs (so optax.chain passes extra
  arguments on), with nothing else in the instance: _replace, copy and
  unpacking give transformations whose halves still work."""
  inner = nag_optax.nesterov(0.1, momentum=0.9, restart="function")
  tx = nag_optax.accumulate_gradients(inner, 2)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  assert not vars(tx)
  init, update = tx
  params, (g,) = _params(), _grads(12, 1)
  # restart="function" refuses an update without value=: the chain passed it.
  chained = optax.chain(optax.clip(10.0), tx)
  state = chained.init(params)
  for _ in range(2):
    _, state = chained.update(g, state, params, value=jnp.float32(1.0))
  assert int(nag_optax.accumulation_gradient_step(state)) == 1

  value = jnp.float32(1.0)
  expected, _ = update(g, init(params), params, value=value)
  calls = []
  counting_init = lambda p: calls.append(1) or init(p)
  variants = [
    tx._replace(init=counting_init),
    copy.copy(tx),
    copy.deepcopy(tx),
    nag_optax.AccumulateGradients(init, update),
  ]
  for other in variants:
    assert type(other) is nag_optax.AccumulateGradients
    state = other.init(params)
    state, emitting = other.accumulate(g, state, params)
    assert not bool(emitting) and other.axis_name is None
    assert isinstance(other.inner.init(params), nag_optax.NesterovState)
    updates, _ = other.update(g, other.init(params), params, value=value)
    chex.assert_trees_all_equal(updates, expected)
    new_params, _ = other.update_and_apply(g, other.init(params), params, value=value)
    chex.assert_trees_all_equal(new_params, params)  # a micro-step
  assert len(calls) == 3
  replaced = tx._replace(update=optax.sgd(0.1).update)
  with pytest.raises(TypeError, match="not the one accumulate_gradients made"):
    replaced.accumulate(g, tx.init(params), params)


def test_a_non_finite_cycle_does_not_spoil_the_next_one():
  inner = optax.sgd(0.1)  # stateless: only the accumulator can carry the inf
  grads = _grads(8, 4)
  grads[0] = jax.tree.map(lambda g: g.at[0].set(jnp.inf), grads[0])
  ours, state, _ = _run(nag_optax.accumulate_gradients(inner, 2), grads)
  ref, _, _ = _run(optax.MultiSteps(inner, 2), grads)
  chex.assert_trees_all_equal(ours[1], ref[1])  # the spoilt cycle: as optax
  assert not np.all(np.isfinite(ours[1]["w"]))
  assert np.all(np.isfinite(ours[3]["w"]))  # the next cycle recovers ...
  assert not np.all(np.isfinite(ref[3]["w"]))  # ... where MultiSteps keeps NaN
  mean = jax.tree.map(lambda a, b: -0.1 * (a + b) / 2, grads[2], grads[3])
  chex.assert_trees_all_close(ours[3], mean, rtol=1e-6)


def test_accessors_and_eval_params_through_the_state():
  inner = nag_optax.nesterov(0.1, momentum=0.9)
  tx = optax.chain(optax.clip(10.0), nag_optax.accumulate_gradients(inner, 2))
  params = _params()
  state = tx.init(params)
  flags, steps = [], []
  for g in _grads(4, 5):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    flags.append(bool(nag_optax.accumulation_emitted(state)))
    steps.append(int(nag_optax.accumulation_gradient_step(state)))
  assert flags == [False, True, False, True, False]
  assert steps == [0, 1, 1, 2, 2]
  assert int(optax.tree.get(state, "gradient_step")) == 2
  # nesterov_eval_params finds the Nesterov state inside: theta = p - c * trace.
  nesterov_state = state[1].inner_opt_state
  expected = jax.tree.map(
    lambda p, t: p - nesterov_state.lookahead * t, params, nesterov_state.trace
  )
  chex.assert_trees_all_close(nag_optax.nesterov_eval_params(state, params), expected)
  assert float(nesterov_state.lookahead) != 0.0
  with pytest.raises(ValueError, match="exactly one accumulate_gradients state"):
    nag_optax.accumulation_emitted(inner.init(params))


def test_bfloat16_gradients_accumulate_in_float32():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  grads = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in _grads(5, 6)]
  inner = nag_optax.nesterov(0.1)
  ours, state, _ = _run(nag_optax.accumulate_gradients(inner, 3), grads, params)
  ref, _, _ = _run(optax.MultiSteps(inner, 3), grads, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(ours))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.acc_grads))
  for a, b in zip(ours, ref, strict=True):
    chex.assert_trees_all_equal(a, b)


def test_state_dtypes_stay_fixed_and_jit_traces_once():
  tx = nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), 2)
  chex.clear_trace_counter()
  update = jax.jit(chex.assert_max_traces(tx.update, n=1))
  state = tx.init(_params())
  before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for g in _grads(6, 3):
    _, state = update(g, state, _params())
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == before


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_every_k_must_be_a_positive_integer(bad):
  with pytest.raises(ValueError, match="every_k_schedule"):
    nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), bad)


def test_other_errors():
  inner = nag_optax.nesterov(0.1)
  with pytest.raises(ValueError, match="every_k_schedule\\(0\\)"):
    nag_optax.accumulate_gradients(inner, lambda step: 0).init(_params())
  with pytest.raises(ValueError, match="accumulator_dtype"):
    nag_optax.accumulate_gradients(inner, 2, accumulator_dtype=jnp.int32)
  with pytest.raises(TypeError, match="GradientTransformation"):
    nag_optax.accumulate_gradients(lambda g: g, 2)
  tx = nag_optax.accumulate_gradients(inner, 2, axis_name="batch")
  state = tx.init(_params())
  with pytest.raises(ValueError, match="outside a mapped context"):
    tx.update(_grads(0, 1)[0], state)
  with pytest.raises(ValueError, match="outside a mapped context"):
    jax.jit(tx.update)(_grads(0, 1)[0], state)
  bad_skip = lambda updates, step, params: (jnp.zeros([], jnp.int32), ())
  tx = nag_optax.accumulate_gradients(inner, 2, should_skip_update_fn=bad_skip)
  with pytest.raises(ValueError, match="boolean scalar"):
    tx.update(_grads(0, 1)[0], tx.init(_params()))
  with pytest.raises(ValueError, match="gradient"):
    tx = nag_optax.accumulate_gradients(inner, 2)
    tx.update({"w": jnp.ones(3)}, tx.init(_params()))


def test_docstring_examples():
  result = doctest.testmod(_accumulation, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted >= 3 and result.failed == 0


# ---------------------------------------------------------------------------
# Across devices: one pmean per emitted step, under pmap and shard_map.

K = 2
STEPS = 6  # three emitted steps
X = np.random.default_rng(7).normal(size=(STEPS, 32, 3))
# The float64 gradient of _params() (3 x 2 + 2 elements), crossing devices
# exactly once per emitted step.
GRADIENT_BYTES = 8 * 8
# Every path sums the batch in another order than one device does: they
# agree to float64 rounding (a few ulps per step). Without the cross-device
# mean a device's parameters move 0.6 away; a doubled mean changes no value
# and is caught by the count of all-reduces below.
RTOL, ATOL = 1e-12, 1e-14


def _inner():
  return nag_optax.nesterov(SCHEDULE, momentum=0.9)


def _accumulating(**kwargs):
  return nag_optax.accumulate_gradients(
    _inner(), K, axis_name="data", accumulator_dtype=jnp.float64, **kwargs
  )


def _reference_full_batch():
  """One device, the full batch, optax.MultiSteps, in float64."""
  tx = optax.MultiSteps(_inner(), K, accumulator_dtype=jnp.float64)
  params, state = _params(), tx.init(_params())
  for x in X:
    updates, state = tx.update(jax.grad(_loss)(params, x), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _device_step(tx, method, *, varying):
  """One device's step: its gradient, then tx.update (and apply_updates) or
  tx.update_and_apply. Under shard_map (``varying``) the gradient is taken
  with respect to parameters cast to varying, so that it stays local."""

  def step(params, state, x):
    at = jax.lax.pcast(params, "data", to="varying") if varying else params
    grads = jax.grad(_loss)(at, x)
    if method == "update_and_apply":
      return tx.update_and_apply(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _replicate(tree, axis_name):
  stacked = jax.tree.map(lambda x: jnp.stack([x] * N_DEVICES), tree)
  return jax.pmap(lambda x: x, axis_name=axis_name)(stacked)


def _pmap_run(tx, method):
  """Every call under jax.pmap: (params, state) with a device axis, and the
  compiled step's HLO."""
  assert jax.local_device_count() == N_DEVICES, "conftest forces 8 CPU devices"
  chex.clear_trace_counter()
  step = jax.pmap(
    chex.assert_max_traces(_device_step(tx, method, varying=False), n=1),
    axis_name="data",
    donate_argnums=(0, 1),
  )
  params = _replicate(_params(), "data")
  state = jax.pmap(tx.init, axis_name="data")(params)
  for x in X:
    params, state = step(params, state, x.reshape(N_DEVICES, -1, 3))
  lowered = step.lower(params, state, X[0].reshape(N_DEVICES, -1, 3))
  return params, state, lowered.compile().as_text()


def _shard_map_run(tx, method):
  """Every call under jax.jit of jax.shard_map: (params, state), the
  accumulator with one row per device, and the compiled step's HLO."""
  mesh = jax.make_mesh(
    (N_DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  state0 = tx.init(_params())
  # The accumulator is device-local: one row per device, sharded; the rest
  # of the state is replicated.
  specs = jax.tree.map(lambda _: P(), state0)._replace(
    acc_grads=jax.tree.map(lambda _: P("data"), state0.acc_grads)
  )
  device_step = _device_step(tx, method, varying=True)

  def body(params, state, x):
    state = state._replace(acc_grads=jax.tree.map(lambda a: a[0], state.acc_grads))
    params, state = device_step(params, state, x)
    state = state._replace(acc_grads=jax.tree.map(lambda a: a[None], state.acc_grads))
    return params, state

  step = jax.jit(
    jax.shard_map(
      body, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
    )
  )
  params = _params()
  state = state0._replace(
    acc_grads=jax.tree.map(lambda a: jnp.zeros((N_DEVICES, *a.shape)), state0.acc_grads)
  )
  for x in X:
    params, state = step(params, state, x)
  return params, state, step.lower(params, state, X[0]).compile().as_text()


def _assert_one_gradient_reduction_in_the_emitting_branch(hlo):
  found = parallel.collectives(hlo)
  # All in the emitting branch (1): none on micro-steps, outside the
  # conditional or in its pass-through branch (0).
  assert {c.branch for c in found} == {1}, found
  assert {c.op for c in found} == {"all-reduce"}, found
  # The gradient once: its bytes exactly (a pmean of a pmean, or a second
  # reduction of any part of it, adds more), in one all-reduce per leaf at
  # most (XLA may combine the leaves into one).
  assert {c.dtype for c in found} == {"f64"}, found
  assert sum(c.input_bytes for c in found) == GRADIENT_BYTES, found
  assert 1 <= len(found) <= len(jax.tree.leaves(_params())), found


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["update", "update_and_apply"])
@pytest.mark.parametrize("path", ["pmap", "shard_map"])
def test_axis_name_equals_one_device_on_the_full_batch_with_one_reduction(path, method):
  """accumulate_gradients(..., axis_name=) in a hand-written step: the
  parameters of one device on the full batch, and one gradient all-reduce
  per emitted step, read from the compiled program."""
  tx = _accumulating()
  if path == "pmap":
    params, state, hlo = _pmap_run(tx, method)
    for leaf in jax.tree.leaves(params):  # replicas identical
      np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
    params = jax.tree.map(lambda x: x[0], params)
    assert np.all(np.asarray(state.gradient_step) == STEPS // K)
  else:
    params, state, hlo = _shard_map_run(tx, method)
    assert int(state.gradient_step) == STEPS // K
  chex.assert_trees_all_close(params, _reference_full_batch(), rtol=RTOL, atol=ATOL)
  # The accumulator is device-local: after the last emitted step it still
  # holds each device's own mean of that cycle, different per device.
  acc = np.asarray(state.acc_grads["b"])
  assert acc.shape == (N_DEVICES, 2) and not np.allclose(acc[0], acc[1])
  _assert_one_gradient_reduction_in_the_emitting_branch(hlo)


@pytest.mark.usefixtures("x64")
def test_collective_placement_detects_a_pmean_every_micro_step():
  """The HLO check above fails for the usual pmean-then-MultiSteps step."""
  tx = optax.MultiSteps(_inner(), K, accumulator_dtype=jnp.float64)

  def step(params, state, x):
    grads = jax.lax.pmean(jax.grad(_loss)(params, x), "data")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _replicate(_params(), "data")
  state = jax.pmap(tx.init, axis_name="data")(params)
  hlo = (
    jax.pmap(step, axis_name="data")
    .lower(params, state, X[0].reshape(N_DEVICES, -1, 3))
    .compile()
    .as_text()
  )
  with pytest.raises(AssertionError):
    _assert_one_gradient_reduction_in_the_emitting_branch(hlo)
  found = parallel.collectives(hlo)
  assert [c for c in found if c.op == "all-reduce" and c.branch is None]


@pytest.mark.usefixtures("x64")
def test_pmap_skip_on_one_device_skips_on_all():
  tx = _accumulating(should_skip_update_fn=optax.skip_not_finite)
  step = jax.pmap(_device_step(tx, "update", varying=False), axis_name="data")
  params = _replicate(_params(), "data")
  state = jax.pmap(tx.init, axis_name="data")(params)
  xs = X[:3].reshape(3, N_DEVICES, -1, 3).copy()
  xs[1, 5, 0, 0] = np.nan  # device 5's micro-batch of call 1 only
  for x in xs:
    params, state = step(params, state, x)
  # Calls 0 and 2 made one emitted step on every device; call 1 was skipped.
  assert np.all(np.asarray(state.gradient_step) == 1)
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
