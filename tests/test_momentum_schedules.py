"""Momentum schedules against their formulas and the values quoted in the notes."""

import doctest

import jax
import numpy as np
import pytest

import nag_optax
from nag_optax import momentum_schedules as ms

COUNTS = np.array([0, 1, 2, 3, 10, 249, 250, 500, 999, 1000, 2500, 5000, 10_000])


def _values(schedule, counts=COUNTS):
  return np.asarray(jax.vmap(schedule)(counts), np.float64)


def _fista_reference(k_max):
  t = np.empty(k_max + 2)
  t[1] = 1.0
  for k in range(1, k_max + 1):
    t[k + 1] = (1 + np.sqrt(1 + 4 * t[k] ** 2)) / 2
  return t


def test_accelerated():
  expected = np.maximum(COUNTS - 1, 0) / (COUNTS + 2)
  np.testing.assert_allclose(_values(ms.accelerated()), expected, rtol=1e-6)


@pytest.mark.usefixtures("x64")
def test_fista_exact_and_beyond_its_table():
  t = _fista_reference(30_000)
  counts = np.array([1, 2, 3, 10, 999, 1000, 1001, 5000, 29_999])
  expected = (t[counts] - 1) / t[counts + 1]
  # Inside the table: exact; beyond 1000 entries: the asymptotic expansion.
  np.testing.assert_allclose(_values(ms.fista(), counts), expected, atol=1e-14)
  np.testing.assert_allclose(
    _values(ms.fista(num_steps=1000), counts), expected, atol=1e-9
  )
  assert float(ms.fista()(0)) == 0.0


def test_strongly_convex():
  for kappa in (1.0, 10.0, 1e4):
    mu = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    np.testing.assert_allclose(_values(ms.strongly_convex(kappa)), mu, rtol=1e-6)


def test_sutskever_matches_the_papers_values_and_final_drop():
  base = _values(ms.sutskever(0.999))
  values = dict(zip(COUNTS.tolist(), base, strict=True))
  # Sutskever et al. 2013: 0.5 before 250, 0.75, 0.8333, 0.875, 0.9, ...
  for count, mu in [
    (249, 0.5),
    (250, 0.75),
    (500, 5 / 6),
    (1000, 0.9),
    (2500, 1 - 1 / 22),
    (5000, 1 - 1 / 42),
    (10_000, 1 - 1 / 82),
  ]:
    assert values[count] == pytest.approx(mu, rel=1e-6)
  capped = _values(ms.sutskever(0.95))
  assert capped.max() == pytest.approx(0.95)
  dropped = _values(ms.sutskever(0.999, total_steps=6000, final_steps=1000))
  np.testing.assert_allclose(dropped[COUNTS >= 5000], 0.9, rtol=1e-6)
  np.testing.assert_allclose(dropped[COUNTS < 5000], base[COUNTS < 5000])


def test_dozat_is_torch_nadams_mu_shifted_by_one():
  b1, psi = 0.9, 0.004
  t = COUNTS + 1.0  # schedule(k) is PyTorch's mu_{k+1}
  expected = b1 * (1 - 0.5 * 0.96 ** (t * psi))
  np.testing.assert_allclose(_values(ms.dozat(b1, psi)), expected, rtol=1e-6)
  # The notes: mu_t is still 0.518 at t = 1000 and 0.812 at t = 10 000.
  assert float(ms.dozat()(999)) == pytest.approx(0.518, abs=5e-4)
  assert float(ms.dozat()(9999)) == pytest.approx(0.812, abs=5e-4)


@pytest.mark.parametrize(
  "module",
  [nag_optax._nesterov, nag_optax._alias, nag_optax._eval_params],
)
def test_docstring_examples_run(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
