"""Adaptive restart (O'Donoghue and Candes 2015) in nesterov / scale_by_nesterov."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import _restart
from nag_optax import momentum_schedules
from tests import harness
from tests import numpy_reference as ref

TOL = 1e-10
ACCELERATED_NP = lambda t: max(t - 1, 0) / (t + 2)


def _nesterov(**kwargs):
  return nag_optax.nesterov(1.0, momentum_schedules.accelerated(), **kwargs)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("kappa", [10, 100, 1000])
@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_beats_no_restart_and_matches_numpy(kappa, scheme):
  expected, expected_restarts = ref.restarted_nag_count(
    kappa, TOL, ACCELERATED_NP, scheme
  )
  plain, plain_state = harness.count(_nesterov(), kappa, TOL, 2500)
  # As many steps as the reference took, so that the restarts compare too.
  ours, state = harness.count(_nesterov(restart=scheme), kappa, TOL, expected)
  assert ours is not None and plain is not None
  assert ours < plain
  assert ours == expected, (ours, expected)
  assert int(plain_state.restarts) == 0
  assert int(state.restarts) == expected_restarts >= 1


@pytest.mark.usefixtures("x64")
def test_fixed_interval_restart_matches_numpy():
  kappa = 1000
  every = int(np.ceil(np.e * np.sqrt(8 * kappa)))
  ours, state = harness.count(_nesterov(restart_every=every), kappa, TOL, 2500)
  expected, _ = ref.restarted_nag_count(
    kappa, TOL, ACCELERATED_NP, None, restart_every=every
  )
  assert ours == expected, (ours, expected)
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


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_never_fires_when_momentum_never_points_uphill(scheme):
  """Overdamped NAG (small step, momentum 0.3) decreases monotonically."""
  make = lambda **kw: nag_optax.nesterov(0.1, 0.3, **kw)
  values, _, state = harness.quadratic(make(restart=scheme), 10, 300)
  plain, _, _ = harness.quadratic(make(), 10, 300)
  assert int(state.restarts) == 0
  # Two different compiled programs: XLA may fuse (and round) the shared
  # arithmetic differently, so the trajectories agree to float64 rounding
  # (a few ulps; a single restart would move them by orders of magnitude
  # more), not bit for bit.
  np.testing.assert_allclose(values, plain, rtol=1e-13, atol=0)
  assert np.all(np.diff(plain) < 0)  # the premise: monotone decrease


def test_function_restart_requires_the_loss():
  tx = _nesterov(restart="function")
  params = jnp.ones(3)
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(params, tx.init(params), params)


def _quadratic_steps(tx, steps):
  """Drives tx on f = 1/2 sum lam x^2 (float32): final x and state."""
  lam = jnp.logspace(0.0, -2.0, 20)
  f = lambda x: 0.5 * jnp.sum(lam * x * x)
  _, x, state = harness.run(tx, jnp.ones(20), steps, grad=lambda x: lam * x, loss=f)
  return x, state


@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_restart_works_under_multisteps_and_inject_hyperparams(scheme):
  x_plain, s_plain = _quadratic_steps(_nesterov(restart=scheme), 200)
  assert int(s_plain.restarts) >= 1
  # Three identical micro-gradients per step: micro-steps emit zeros.
  x_multi, s_multi = _quadratic_steps(
    optax.MultiSteps(_nesterov(restart=scheme), every_k_schedule=3), 600
  )
  injected = optax.inject_hyperparams(nag_optax.nesterov)(
    learning_rate=1.0, momentum=0.9, restart=scheme
  )
  x_inject, s_inject = _quadratic_steps(injected, 200)
  x_const, s_const = _quadratic_steps(nag_optax.nesterov(1.0, 0.9, restart=scheme), 200)
  np.testing.assert_allclose(x_multi, x_plain, rtol=1e-5, atol=1e-7)
  inner = harness.inner(s_multi, nag_optax.NesterovState)
  assert int(inner.restarts) == int(s_plain.restarts)
  np.testing.assert_array_equal(x_inject, x_const)
  inner = harness.inner(s_inject, nag_optax.NesterovState)
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


RESTARTING = {
  "nesterov": lambda **kw: nag_optax.nesterov(0.1, 0.9, **kw),
  "adan": lambda **kw: nag_optax.adan(0.1, **kw),
}


@pytest.mark.parametrize("name", sorted(RESTARTING))
def test_the_restart_bookkeeping_is_the_same_for_every_optimizer(name):
  """One restart piece: same fields, same advance, for nesterov and adan."""
  tx = RESTARTING[name](restart="function", restart_every=4)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  assert (state.momentum_count.dtype, state.restarts.dtype) == (jnp.int32,) * 2
  assert float(state.prev_value) == np.inf
  values = [3.0, 2.0, 2.5, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.2]
  counts, restarts = [], []
  for value in values:
    _, state = tx.update(params, state, params, value=jnp.float32(value))
    counts.append(int(state.momentum_count))
    restarts.append(int(state.restarts))
    assert float(state.prev_value) == np.float32(value)
  # The loss went up at calls 3 and 10; the fourth step after a restart
  # restarts too (after call 7).
  assert counts == [1, 2, 0, 1, 2, 3, 0, 1, 2, 0]
  assert restarts == [0, 0, 1, 1, 1, 1, 2, 2, 2, 3]
  assert int(state.count) == len(values)


@pytest.mark.parametrize(
  "grad,step,uphill",
  [
    (1j, 1j, True),  # <g, s> = |g|^2
    (1j, 1.0, False),  # <g, s> = -1j: at right angles, not uphill
    (1j, -1.0 + 1j, True),  # <g, s> = 1 + 1j (without the conjugate: -1 - 1j)
    (1.0, -1.0 + 5j, False),  # <g, s> = -1 + 5j
  ],
)
def test_the_gradient_restart_takes_the_real_part_of_the_conjugated_product(
  grad, step, uphill
):
  state = nag_optax.nesterov(0.1, restart="gradient").init(jnp.zeros(1))
  decide = _restart.Restart("gradient", None).decide
  as_tree = lambda z: {"z": jnp.array([z], jnp.complex64), "x": jnp.zeros(2)}
  decision = decide(state, grads=as_tree(grad), step=as_tree(step), value=None)
  assert bool(decision) == uphill
