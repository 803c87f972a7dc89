"""Momentum schedules against their published formulas, and how nesterov
reads a schedule: mu_k in the buffer, mu_{k+1} in the look-ahead."""

import doctest

import jax
import numpy as np
import pytest

import nag_optax
from nag_optax import momentum_schedules as ms
from tests import harness
from tests import numpy_reference as ref

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


def test_sutskever_matches_the_papers_formula_and_final_drop():
  base = _values(ms.sutskever(0.999))
  # Sutskever et al. 2013 (ICML), the schedule of their autoencoder
  # experiments: mu_t = min(1 - 2^(-1 - log2(floor(t / 250) + 1)), mu_max),
  # transcribed as printed (with its log2), i.e. 0.5 before t = 250, then
  # 0.75, 5/6, 7/8, ... (1 - 1 / (2 b) in block b = floor(t / 250) + 1).
  paper = np.minimum(1 - 2.0 ** (-1 - np.log2(np.floor(COUNTS / 250) + 1)), 0.999)
  np.testing.assert_allclose(base, paper, rtol=1e-6)
  values = dict(zip(COUNTS.tolist(), base, strict=True))
  for count, block in [(249, 1), (250, 2), (500, 3), (1000, 5), (2500, 11)]:
    assert values[count] == pytest.approx(1 - 1 / (2 * block), rel=1e-6)
  capped = _values(ms.sutskever(0.95))
  assert capped.max() == pytest.approx(0.95)
  # The paper's final drop: mu = 0.9 for the last 1000 updates.
  dropped = _values(ms.sutskever(0.999, total_steps=6000, final_steps=1000))
  np.testing.assert_allclose(dropped[COUNTS >= 5000], 0.9, rtol=1e-6)
  np.testing.assert_allclose(dropped[COUNTS < 5000], base[COUNTS < 5000])


def test_dozat_is_torch_nadams_mu_shifted_by_one():
  b1, psi = 0.9, 0.004
  t = COUNTS + 1.0  # schedule(k) is PyTorch's mu_{k+1}
  expected = b1 * (1 - 0.5 * 0.96 ** (t * psi))
  np.testing.assert_allclose(_values(ms.dozat(b1, psi)), expected, rtol=1e-6)
  # Dozat (2016) and torch.optim.NAdam: mu_t = b1 (1 - 0.96^(t psi) / 2),
  # psi = 0.004 (Dozat's 0.96^(t / 250)). The warm-up is slow: t psi = 4 at
  # t = 1000, where 0.96^4 = 0.84934656 exactly, so mu_1000 = 0.9 (1 -
  # 0.42467328) = 0.517794048, still far below b1 = 0.9.
  assert float(ms.dozat()(999)) == pytest.approx(0.517794048, rel=1e-6)
  assert float(ms.dozat()(9999)) == pytest.approx(0.9 * (1 - 0.5 * 0.96**40), rel=1e-6)


def _period_three(t):
  """A momentum that changes at every step: 0.5, 0.7, 0.9, 0.5, ... (NumPy
  and JAX alike)."""
  return 0.5 + 0.2 * (t % 3)


def _stored_form_count(kappa, tol, buffer_mu, lookahead_mu, max_steps=5000):
  """nesterov's "pytorch" form with step 1/L = 1 on the quadratic of
  numpy_reference.quadratic, with the momentum read at the counts given:
  m <- buffer_mu(k) m + g(p), p <- p - (g + lookahead_mu(k) m), counted on
  theta = p + lookahead_mu(k) m. The right reading is (mu_k, mu_{k+1})."""
  lam, f, grad = ref.quadratic(kappa)
  p, m = np.ones_like(lam), np.zeros_like(lam)
  f0 = f(p)
  for k in range(max_steps):
    g = grad(p)
    m = buffer_mu(k) * m + g
    p = p - (g + lookahead_mu(k) * m)
    if f(p + lookahead_mu(k) * m) <= tol * f0:
      return k + 1
  return None


@pytest.mark.usefixtures("x64")
def test_a_schedule_that_changes_every_step_is_read_at_k_and_k_plus_1():
  """Under a piecewise-constant schedule (sutskever's 250-step blocks) mu_k
  and mu_{k+1} differ at one step in 250 and the iteration counts cannot
  tell them apart; with a new momentum at every step they can. nesterov
  must count exactly as textbook NAG (Sutskever et al. 2013, eq. 3-4, in
  numpy_reference.nag_count), and every other reading of the schedule
  counts differently."""
  kappa, tol = 1000, 1e-6
  expected = ref.nag_count(kappa, tol, _period_three)
  ours, state = harness.count(nag_optax.nesterov(1.0, _period_three), kappa, tol, 2000)
  assert ours == expected, (ours, expected)
  assert int(state.count) == 2000
  mu = _period_three
  assert _stored_form_count(kappa, tol, mu, lambda k: mu(k + 1)) == expected
  wrong = {
    "mu_k in both": _stored_form_count(kappa, tol, mu, mu),
    "mu_{k+1} in both": _stored_form_count(
      kappa, tol, lambda k: mu(k + 1), lambda k: mu(k + 1)
    ),
    "swapped": _stored_form_count(kappa, tol, lambda k: mu(k + 1), mu),
  }
  assert all(count != expected for count in wrong.values()), (expected, wrong)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("form", ["pytorch", "sutskever"])
def test_a_schedule_that_changes_every_step_gives_the_textbook_trajectory(form):
  lr = 0.05
  ours, _ = harness.trajectory(nag_optax.nesterov(lr, _period_three, form=form))
  textbook = ref.textbook_nag(
    harness.P0, harness.grad_np, harness.STEPS, lambda t: lr, _period_three
  )
  lookahead = np.stack([la for _, la in textbook])
  assert harness.max_dev(ours, lookahead) < harness.TIGHT
  # The schedule read one step late moves the path by far more.
  late = ref.textbook_nag(
    harness.P0,
    harness.grad_np,
    harness.STEPS,
    lambda t: lr,
    lambda t: _period_three(t + 1),
  )
  assert harness.max_dev(np.stack([la for _, la in late]), lookahead) > 1e-3


@pytest.mark.parametrize(
  "module",
  [nag_optax._nesterov, nag_optax._alias, nag_optax._eval_params],
)
def test_docstring_examples_run(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
