"""Nesterov's acceleration on ill-conditioned quadratics, against theory.

Iteration counts of nag_optax must match a NumPy textbook NAG exactly (both
run the same recurrence in float64),
and the speed-up over gradient descent must grow like sqrt(kappa).
"""

import numpy as np
import pytest

import nag_optax
from nag_optax import momentum_schedules
from tests import harness
from tests import numpy_reference as ref

pytestmark = pytest.mark.usefixtures("x64")

KAPPAS = (10, 100, 1000, 10000)


def _strongly_convex_mu(kappa):
  return (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)


CASES = {
  # name: (optimizer factory of kappa, numpy momentum of (t, kappa), steps)
  "constant-pytorch": (
    lambda k: nag_optax.nesterov(1.0, momentum_schedules.strongly_convex(k)),
    lambda t, k: _strongly_convex_mu(k),
    1000,
  ),
  "constant-sutskever": (
    lambda k: nag_optax.nesterov(
      1.0, momentum_schedules.strongly_convex(k), form="sutskever"
    ),
    lambda t, k: _strongly_convex_mu(k),
    1000,
  ),
  "accelerated": (
    lambda k: nag_optax.nesterov(1.0, momentum_schedules.accelerated()),
    lambda t, k: max(t - 1, 0) / (t + 2),
    1000,
  ),
  "sutskever-schedule": (
    lambda k: nag_optax.nesterov(
      1.0, momentum_schedules.sutskever(0.999), form="sutskever"
    ),
    lambda t, k: min(1 - 1 / (2 * (t // 250 + 1)), 0.999),
    2500,
  ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kappa", KAPPAS)
def test_iterations_match_numpy_textbook_nag(case, kappa):
  make, mu, steps = CASES[case]
  expected = ref.nag_count(kappa, 1e-6, lambda t: mu(t, kappa))
  ours, _ = harness.count(make(kappa), kappa, 1e-6, steps)
  assert expected is not None and ours is not None
  assert ours == expected, (ours, expected)


def test_speedup_over_gradient_descent_grows_like_sqrt_kappa():
  tol = 1e-10
  gd = np.array([ref.gradient_descent_count(k, tol) for k in KAPPAS], float)
  nag = np.array(
    [
      harness.count(
        nag_optax.nesterov(1.0, momentum_schedules.strongly_convex(k)),
        k,
        tol,
        1000,
      )[0]
      for k in KAPPAS
    ],
    float,
  )
  # NAG needs O(sqrt(kappa) log 1/eps) iterations, GD O(kappa log 1/eps).
  nag_slope = np.polyfit(np.log(KAPPAS), np.log(nag), 1)[0]
  speedup_slope = np.polyfit(np.log(KAPPAS), np.log(gd / nag), 1)[0]
  assert 0.4 <= nag_slope <= 0.6, nag_slope
  assert 0.4 <= speedup_slope <= 0.6, speedup_slope
  assert np.all(nag <= 1.1 * np.sqrt(KAPPAS) * np.log(1 / tol))
