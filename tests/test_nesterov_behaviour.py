"""nesterov inside optax pipelines, its errors, and data parallelism under pmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import _substate
from tests import harness
from tests import numpy_reference as ref

# A small linear regression: 64 examples, 5 features, 2 outputs.
_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.normal(size=(64, 5)), jnp.float32)
Y = jnp.asarray(_RNG.normal(size=(64, 2)), jnp.float32)
PARAMS = {"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)}


def loss_fn(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


grad_fn = jax.jit(jax.grad(loss_fn))


def _train(tx, steps, batches=None):
  """Runs tx; `batches` splits every step's batch into that many micro-batches."""
  params, state = PARAMS, tx.init(PARAMS)
  for _ in range(steps):
    for x, y in zip(
      jnp.split(X, batches or 1), jnp.split(Y, batches or 1), strict=True
    ):
      updates, state = tx.update(grad_fn(params, x, y), state, params)
      params = optax.apply_updates(params, updates)
  return params, state


def test_multisteps_k_micro_batches_equal_one_k_times_batch():
  schedule = optax.linear_schedule(0.1, 0.01, 10)
  full, _ = _train(nag_optax.nesterov(schedule, 0.9, weight_decay=1e-3), 10)
  accumulated, state = _train(
    optax.MultiSteps(
      nag_optax.nesterov(schedule, 0.9, weight_decay=1e-3), every_k_schedule=4
    ),
    10,
    batches=4,
  )
  chex.assert_trees_all_close(accumulated, full, rtol=1e-5, atol=1e-6)
  # The inner schedule saw emitted steps only.
  assert int(state.inner_opt_state.count) == 10
  assert int(state.gradient_step) == 10
  theta = nag_optax.nesterov_eval_params(state, accumulated)
  chex.assert_trees_all_close(
    theta,
    nag_optax.nesterov_eval_params(
      _train(nag_optax.nesterov(schedule, 0.9, weight_decay=1e-3), 10)[1], full
    ),
    rtol=1e-5,
    atol=1e-6,
  )


def test_inject_hyperparams_drives_learning_rate_and_momentum():
  tx = optax.inject_hyperparams(nag_optax.nesterov)(learning_rate=0.1, momentum=0.9)
  params, state = PARAMS, tx.init(PARAMS)
  update = jax.jit(tx.update)
  for step in range(6):
    if step == 3:  # change both mid-run, as a schedule-by-hand would
      state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
      state.hyperparams["momentum"] = jnp.asarray(0.5, jnp.float32)
    updates, state = update(grad_fn(params, X, Y), state, params)
    params = optax.apply_updates(params, updates)
  assert update._cache_size() == 1
  # Reference: the same rule with the per-step values.
  lrs, mus = [0.1] * 3 + [0.05] * 3, [0.9] * 3 + [0.5] * 3
  ref_params, buf = PARAMS, jax.tree.map(jnp.zeros_like, PARAMS)
  for lr, mu in zip(lrs, mus, strict=True):
    g = grad_fn(ref_params, X, Y)
    buf = jax.tree.map(lambda b, g: mu * b + g, buf, g)
    ref_params = jax.tree.map(lambda p, g, b: p - lr * (g + mu * b), ref_params, g, buf)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_validates_concrete_values_only():
  # inject_hyperparams builds the optimizer at init: concrete values fail there.
  bad = optax.inject_hyperparams(nag_optax.nesterov)(learning_rate=0.1, momentum=1.5)
  with pytest.raises(ValueError, match="momentum"):
    bad.init(PARAMS)
  tx = optax.inject_hyperparams(nag_optax.nesterov)(learning_rate=0.1)
  jax.jit(tx.update)(PARAMS, tx.init(PARAMS), PARAMS)  # traced values: no check


def test_chain_with_clipping_equals_clipping_by_hand():
  tx = optax.chain(optax.clip_by_global_norm(0.05), nag_optax.nesterov(0.1, 0.9))
  params, state = _train(tx, 5)
  ref_params, ref_state = PARAMS, nag_optax.nesterov(0.1, 0.9).init(PARAMS)
  ref_tx = nag_optax.nesterov(0.1, 0.9)
  for _ in range(5):
    g = grad_fn(ref_params, X, Y)
    norm = optax.tree.norm(g)
    g = jax.tree.map(lambda x: x * jnp.minimum(1.0, 0.05 / norm), g)
    updates, ref_state = ref_tx.update(g, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-6)
  chex.assert_trees_all_close(
    nag_optax.nesterov_eval_params(state, params),
    nag_optax.nesterov_eval_params(ref_state, ref_params),
    rtol=1e-6,
  )


def test_apply_if_finite_skips_non_finite_steps():
  tx = optax.apply_if_finite(nag_optax.nesterov(0.1, 0.9), max_consecutive_errors=3)
  state = tx.init(PARAMS)
  good = grad_fn(PARAMS, X, Y)
  _, state = tx.update(good, state, PARAMS)
  before = state.inner_state
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), good)
  updates, state = tx.update(bad, state, PARAMS)
  assert float(optax.tree.norm(updates)) == 0.0
  chex.assert_trees_all_equal(state.inner_state, before)
  updates, state = tx.update(good, state, PARAMS)
  assert int(state.inner_state.count) == 2 and float(optax.tree.norm(updates)) > 0


def test_masked_and_none_leaves():
  params = {"w": jnp.ones(3), "frozen": jnp.ones(2), "absent": None}
  grads = {"w": jnp.ones(3), "frozen": jnp.ones(2), "absent": None}
  tx = optax.masked(
    nag_optax.nesterov(0.1, 0.9), {"w": True, "frozen": False, "absent": False}
  )
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  # optax.masked passes masked-out gradients through as updates (its rule).
  np.testing.assert_array_equal(params["frozen"], 1.0 + 2 * 1.0)
  theta = nag_optax.nesterov_eval_params(state, params)
  # w: m_2 = 0.9 + 1 = 1.9, Theta - theta = -lr mu m_2.
  np.testing.assert_allclose(theta["w"], params["w"] + 0.1 * 0.9 * 1.9, rtol=1e-6)
  np.testing.assert_array_equal(theta["frozen"], params["frozen"])
  # None leaves pass straight through nesterov itself.
  tx = nag_optax.nesterov(0.1, 0.9, weight_decay=0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert updates["absent"] is None and updates["w"].shape == (3,)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"dampening": 1.0}, "dampening"),
    ({"form": "keras"}, "form"),
    ({"restart": "always"}, "restart"),
    ({"restart_every": 0}, "restart_every"),
    ({"accumulator_dtype": jnp.int32}, "accumulator_dtype"),
    ({"momentum": jnp.ones(2) * 0.5}, "scalar"),
  ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, match):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    nag_optax.nesterov(**kwargs)


def test_bad_momentum_fails_for_scale_by_nesterov_and_schedules():
  with pytest.raises(ValueError, match="momentum"):
    nag_optax.scale_by_nesterov(1.2)
  with pytest.raises(ValueError, match="condition_number"):
    nag_optax.momentum_schedules.strongly_convex(0.5)
  with pytest.raises(ValueError, match="max_momentum"):
    nag_optax.momentum_schedules.sutskever(1.0)


def test_update_errors_name_the_problem():
  tx = nag_optax.nesterov(0.1, 0.9, weight_decay=1e-4)
  state = tx.init(PARAMS)
  grads = grad_fn(PARAMS, X, Y)
  with pytest.raises(ValueError, match="weight_decay needs the parameters"):
    tx.update(grads, state)
  with pytest.raises(ValueError, match="gradient tree does not match"):
    tx.update({"w": grads["w"]}, state, PARAMS)
  with pytest.raises(ValueError, match=r"\['b'\] has shape \(3,\)"):
    tx.update({"w": grads["w"], "b": jnp.zeros(3)}, state, PARAMS)


def test_eval_params_errors():
  with pytest.raises(ValueError, match="exactly one Nesterov state"):
    nag_optax.nesterov_eval_params(optax.adam(0.1).init(PARAMS), PARAMS)
  two = optax.chain(nag_optax.nesterov(0.1), nag_optax.nesterov(0.1))
  with pytest.raises(ValueError, match="found 2"):
    nag_optax.nesterov_eval_params(two.init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="only for a bare"):
    nag_optax.nesterov_eval_params(
      nag_optax.nesterov(0.1).init(PARAMS), PARAMS, learning_rate=0.1
    )


def test_pmap_with_averaged_gradients_equals_one_device_on_the_full_batch():
  n = jax.local_device_count()
  assert n == 8, "tests/conftest.py forces 8 CPU devices"
  tx = nag_optax.nesterov(0.1, 0.9, weight_decay=1e-3)
  chex.clear_trace_counter()

  def step(params, state, x, y):
    grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "data")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.pmap(chex.assert_max_traces(step, n=1), axis_name="data")
  init = jax.pmap(tx.init, axis_name="data")
  # Place replicas through a pmap with the same axis name, so every call sees
  # the same shardings: host arrays, or another axis name, trace again.
  replicated = jax.pmap(lambda p: p, axis_name="data")(
    jax.tree.map(lambda p: jnp.stack([p] * n), PARAMS)
  )
  params, state = replicated, init(replicated)
  xs, ys = X.reshape(n, -1, 5), Y.reshape(n, -1, 2)
  for _ in range(5):
    params, state = step(params, state, xs, ys)
  full, _ = _train(tx, 5)
  for leaf in jax.tree.leaves(params):  # replicas identical
    np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[0], leaf.shape))
  chex.assert_trees_all_close(
    jax.tree.map(lambda x: x[0], params), full, rtol=1e-5, atol=1e-6
  )


def test_the_units_of_lookahead_are_a_field_of_one_state_class():
  assert nag_optax.NesterovState is nag_optax.ScaleByNesterovState
  full = nag_optax.nesterov(0.1, 0.9).init(PARAMS)
  bare = nag_optax.scale_by_nesterov(0.9).init(PARAMS)
  assert type(full) is type(bare)
  assert bool(full.lookahead_includes_lr) and not bool(bare.lookahead_includes_lr)


def test_eval_params_inside_jit_reads_the_units_from_the_state():
  """Under jit the state is traced: the field decides in the graph."""
  lr = 0.1
  bare = optax.chain(nag_optax.scale_by_nesterov(0.9), optax.scale(-lr))
  theta = jax.jit(nag_optax.nesterov_eval_params)
  for tx, kwargs in [
    (nag_optax.nesterov(lr, 0.9), {}),
    (bare, {"learning_rate": lr}),
  ]:
    params, state = _train(tx, 3)
    expected = nag_optax.nesterov_eval_params(state, params, **kwargs)  # eager
    chex.assert_trees_all_close(theta(state, params, **kwargs), expected)
    # theta = params + lr mu m for the "pytorch" form
    inner = _substate.find_one(
      state, nag_optax.ScaleByNesterovState, caller="test", what="Nesterov"
    )
    chex.assert_trees_all_close(
      expected,
      jax.tree.map(lambda p, m: p + lr * 0.9 * m, params, inner.trace),
      rtol=1e-6,
    )
  params, state = _train(bare, 3)
  missing = theta(state, params)  # cannot raise inside jit: NaN says it
  assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(missing))


def _per_step_momentum(t):
  """A momentum that changes at every step (0.5, 0.6, 0.66, ...): the
  look-ahead's mu_{t+1} differs from the buffer's mu_t at every step."""
  return 0.5 + 0.4 * t / (t + 3)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
  "wrap,calls_per_step,clip",
  [
    (lambda tx: tx, 1, None),
    (lambda tx: optax.chain(optax.clip(1.0), tx), 1, 1.0),
    (lambda tx: optax.MultiSteps(tx, 2, accumulator_dtype=jnp.float64), 2, None),
    (lambda tx: optax.apply_if_finite(tx, 3), 1, None),
    (lambda tx: optax.masked(tx, {"w": True}), 1, None),
    (
      lambda tx: nag_optax.accumulate_gradients(tx, 2, accumulator_dtype=None),
      2,
      None,
    ),
  ],
  ids=["bare", "chain", "MultiSteps", "apply_if_finite", "masked", "accumulate"],
)
def test_eval_params_inside_every_wrapper_are_the_textbook_nag_iterate(
  wrap, calls_per_step, clip
):
  """After several steps, nesterov_eval_params finds the Nesterov state
  inside the wrapper and returns theta_t of textbook NAG (Sutskever et al.
  2013, eq. 3-4, transcribed in tests/numpy_reference.py), while the stored
  parameters are its look-ahead theta_t + mu_{t+1} v_t."""
  lr, steps = 0.05, 6
  tx = wrap(nag_optax.nesterov(lr, _per_step_momentum))
  params = {"w": jnp.asarray(harness.P0)}
  state = tx.init(params)
  (found,) = _substate.find_all(state, nag_optax.NesterovState)
  assert found.trace.keys() == params.keys()
  chex.assert_trees_all_equal(nag_optax.nesterov_eval_params(state, params), params)
  update = jax.jit(tx.update)
  for _ in range(steps):
    # Micro-steps leave the parameters where they are: each call of a cycle
    # takes the same gradient, and their mean is that gradient.
    grads = {"w": harness.grad_jnp(params["w"])}
    for _ in range(calls_per_step):
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)

  if clip is None:
    grad_np = harness.grad_np
  else:
    grad_np = lambda p: np.clip(harness.grad_np(p), -clip, clip)
  textbook = ref.textbook_nag(
    harness.P0, grad_np, steps, lambda t: lr, _per_step_momentum
  )
  theta, lookahead = textbook[-1]
  assert harness.max_dev(params["w"], lookahead) < harness.TIGHT
  theta_ours = nag_optax.nesterov_eval_params(state, params)["w"]
  assert harness.max_dev(theta_ours, theta) < harness.TIGHT
  assert harness.max_dev(theta, lookahead) > 1e-3  # the correction matters
