"""Adaptive restart (O'Donoghue and Candes 2015) in nesterov / scale_by_nesterov."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import momentum_schedules
from tests import numpy_reference as ref
from tests import quadratic_runs

TOL = 1e-10
ACCELERATED_NP = lambda t: max(t - 1, 0) / (t + 2)


def _nesterov(**kwargs):
  return nag_optax.nesterov(1.0, momentum_schedules.accelerated(), **kwargs)


@pytest.mark.parametrize("kappa", [10, 100, 1000])
@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_beats_no_restart_and_matches_numpy(kappa, scheme):
  steps = 2500
  plain, plain_state = quadratic_runs.count(_nesterov(), kappa, TOL, steps)
  ours, state = quadratic_runs.count(_nesterov(restart=scheme), kappa, TOL, steps)
  expected, expected_restarts = ref.restarted_nag_count(
    kappa, TOL, ACCELERATED_NP, scheme
  )
  assert ours is not None and plain is not None
  assert ours < plain
  assert abs(ours - expected) <= 2, (ours, expected)
  assert int(plain_state.restarts) == 0
  assert int(state.restarts) >= expected_restarts >= 1


def test_fixed_interval_restart_matches_numpy():
  kappa = 1000
  every = int(np.ceil(np.e * np.sqrt(8 * kappa)))
  ours, state = quadratic_runs.count(_nesterov(restart_every=every), kappa, TOL, 2500)
  expected, _ = ref.restarted_nag_count(
    kappa, TOL, ACCELERATED_NP, None, restart_every=every
  )
  assert abs(ours - expected) <= 2, (ours, expected)
  assert int(state.restarts) == 2500 // every


def test_restart_zeroes_momentum_and_restarts_the_schedule():
  tx = _nesterov(restart_every=3)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  counts = []
  for _ in range(7):
    updates, state = tx.update(params, state, params)
    params = optax.apply_updates(params, updates)
    counts.append(int(state.momentum_count))
    if counts[-1] == 0:
      np.testing.assert_array_equal(state.trace, 0.0)
  assert counts == [1, 2, 0, 1, 2, 0, 1]
  assert int(state.restarts) == 2
  assert int(state.count) == 7


@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_never_fires_when_momentum_never_points_uphill(scheme):
  """Overdamped NAG (small step, momentum 0.3) decreases monotonically."""
  make = lambda **kw: nag_optax.nesterov(0.1, 0.3, **kw)
  values, _, state = quadratic_runs.run(make(restart=scheme), 10, 300)
  plain, _, _ = quadratic_runs.run(make(), 10, 300)
  assert int(state.restarts) == 0
  np.testing.assert_array_equal(values, plain)
  assert np.all(np.diff(plain) < 0)  # the premise: monotone decrease


def test_function_restart_requires_the_loss():
  tx = _nesterov(restart="function")
  params = jnp.ones(3)
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(params, tx.init(params), params)


def _quadratic_steps(tx, steps, micro=1):
  """Drives tx on f = 1/2 sum lam x^2 with `micro` identical micro-gradients."""
  lam = jnp.logspace(0.0, -2.0, 20)
  f = lambda x: 0.5 * jnp.sum(lam * x * x)

  @jax.jit
  def run(x):
    def step(carry, _):
      x, state = carry
      for _ in range(micro):
        updates, state = tx.update(lam * x, state, x, value=f(x))
      return (optax.apply_updates(x, updates), state), None

    return jax.lax.scan(step, (x, tx.init(x)), length=steps)[0]

  return run(jnp.ones(20))


def _nesterov_states(opt_state):
  is_state = lambda x: isinstance(x, nag_optax.NesterovState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_works_under_multisteps_and_inject_hyperparams(scheme):
  x_plain, s_plain = _quadratic_steps(_nesterov(restart=scheme), 200)
  assert int(s_plain.restarts) >= 1
  x_multi, s_multi = _quadratic_steps(
    optax.MultiSteps(_nesterov(restart=scheme), every_k_schedule=3), 200, micro=3
  )
  injected = optax.inject_hyperparams(nag_optax.nesterov)(
    learning_rate=1.0, momentum=0.9, restart=scheme
  )
  x_inject, s_inject = _quadratic_steps(injected, 200)
  x_const, s_const = _quadratic_steps(nag_optax.nesterov(1.0, 0.9, restart=scheme), 200)
  np.testing.assert_allclose(x_multi, x_plain, rtol=1e-5, atol=1e-7)
  (inner,) = _nesterov_states(s_multi)
  assert int(inner.restarts) == int(s_plain.restarts)
  np.testing.assert_array_equal(x_inject, x_const)
  (inner,) = _nesterov_states(s_inject)
  assert int(inner.restarts) == int(s_const.restarts) >= 1


def test_gradient_restart_on_scale_by_nesterov():
  tx = optax.chain(
    nag_optax.scale_by_nesterov(momentum_schedules.accelerated(), restart="gradient"),
    optax.scale_by_learning_rate(1.0),
  )
  x_bare, s_bare = _quadratic_steps(tx, 300)
  x_full, s_full = _quadratic_steps(_nesterov(restart="gradient"), 300)
  np.testing.assert_allclose(x_bare, x_full, rtol=1e-6, atol=1e-9)
  assert int(s_bare[0].restarts) == int(s_full.restarts) >= 1
