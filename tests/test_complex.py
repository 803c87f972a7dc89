"""Complex parameters: every optimizer handles them as optax does.

As for any optax optimizer, the gradient passed to ``update`` is the
conjugate of ``jax.grad``'s (the direction of steepest ascent). Nesterov is
linear, so a complex parameter must move exactly as the pair of its real and
imaginary parts; NAdam and Adan take |g|^2 in their second moments, checked
against optax.nadam and against the NumPy transcriptions with complex arrays.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import momentum_schedules
from tests import harness
from tests import numpy_reference as ref
from tests.harness import STEPS
from tests.harness import TIGHT
from tests.harness import max_dev

pytestmark = pytest.mark.usefixtures("x64")

Z0 = harness.P0 + 1j * np.linspace(0.8, -0.7, 6)
TARGET = np.linspace(0.3, -0.2, 6) - 0.4j


def grad_np(z):
  """A smooth non-linear complex field (the complex analogue of harness's)."""
  return harness.HESSIAN @ z - np.sin(z)


def grad_jnp(z):
  return jnp.asarray(harness.HESSIAN) @ z - jnp.sin(z)


def complex_trajectory(tx, grad=grad_jnp, p0=Z0):
  return harness.trajectory(tx, grad=grad, p0=p0)


NESTEROV_CASES = {
  "coupled": (
    dict(weight_decay=0.03, dampening=0.2),
    lambda p0, g: ref.torch_sgd(p0, g, STEPS, lambda t: 0.05, 0.9, 0.2, 0.03),
  ),
  "sutskever-decoupled": (
    dict(form="sutskever", weight_decay=0.03, decoupled_weight_decay=True),
    lambda p0, g: ref.keras_sgd(p0, g, STEPS, lambda t: 0.05, 0.9, 0.03),
  ),
}


@pytest.mark.parametrize("case", sorted(NESTEROV_CASES))
def test_nesterov_matches_the_transcriptions_on_complex_arrays(case):
  kwargs, reference = NESTEROV_CASES[case]
  ours, state = complex_trajectory(nag_optax.nesterov(0.05, 0.9, **kwargs))
  assert state.trace.dtype == jnp.complex128
  assert max_dev(ours, reference(Z0, grad_np)) < TIGHT


@pytest.mark.parametrize("form", ["pytorch", "sutskever"])
def test_nesterov_moves_a_complex_parameter_as_its_real_and_imaginary_parts(form):
  """The same linear problem as z in C^6 and as (x, y) in R^12: same path,
  same gradient restarts (Re <g, step> is the real inner product of the
  pairs), same NAG iterate theta. 120 steps: later the distance to the
  optimum nears rounding level, where an inner product's sign is noise."""
  h = jnp.asarray(harness.HESSIAN)
  lr = 1.0 / float(np.linalg.eigvalsh(harness.HESSIAN).max())
  tx = nag_optax.nesterov(
    lr,
    momentum_schedules.accelerated(),
    form=form,
    weight_decay=0.01,
    restart="gradient",
  )
  theta = lambda p, state: nag_optax.nesterov_eval_params(state, p)
  as_complex = harness.run(tx, Z0, 120, grad=lambda z: h @ (z - TARGET), record=theta)
  as_pairs = harness.run(
    tx,
    {"re": Z0.real, "im": Z0.imag},
    120,
    grad=lambda p: {
      "re": h @ (p["re"] - TARGET.real),
      "im": h @ (p["im"] - TARGET.imag),
    },
    record=theta,
  )
  (thetas, z, state), (pair_thetas, pair, pair_state) = as_complex, as_pairs
  assert int(state.restarts) == int(pair_state.restarts) >= 1
  assert max_dev(z, pair["re"] + 1j * pair["im"]) < TIGHT
  assert max_dev(thetas, pair_thetas["re"] + 1j * pair_thetas["im"]) < TIGHT


def test_nadam_with_infinite_momentum_decay_is_optax_nadam_on_complex_arrays():
  ours, state = complex_trajectory(nag_optax.nadam(0.02, momentum_decay=float("inf")))
  theirs, _ = complex_trajectory(optax.nadam(0.02))
  assert max_dev(ours, theirs) < TIGHT
  assert state.mu.dtype == jnp.complex128 and state.nu.dtype == jnp.float64


@pytest.mark.parametrize(
  "kwargs",
  [{}, {"weight_decay": 0.05}, {"weight_decay": 0.05, "decoupled_weight_decay": True}],
)
def test_nadam_matches_the_torch_transcription_with_abs_squared(kwargs):
  ours, _ = complex_trajectory(nag_optax.nadam(0.02, **kwargs))
  theirs = ref.torch_nadam(Z0, grad_np, STEPS, 0.02, **kwargs)
  assert max_dev(ours, theirs) < TIGHT


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"weight_decay": 0.02},
    {"weight_decay": 0.02, "no_prox": True},
    {"max_grad_norm": 0.5, "weight_decay": 0.02},
  ],
)
def test_adan_matches_the_reference_transcription_with_abs_squared(kwargs):
  ours, state = complex_trajectory(nag_optax.adan(0.01, **kwargs))
  theirs = ref.reference_adan(Z0, grad_np, STEPS, 0.01, **kwargs)
  assert max_dev(ours, theirs) < TIGHT
  assert state.m.dtype == jnp.complex128 and state.n.dtype == jnp.float64


def _parabola(z):
  """optax's complex test problem: sum |z - (1 + 1j) [1, -1, 1]|^2."""
  return jnp.sum(jnp.abs(z - (1 + 1j) * jnp.array([1.0, -1.0, 1.0])) ** 2)


@pytest.mark.parametrize(
  "tx",
  [
    nag_optax.nesterov(0.1, 0.9, restart="gradient"),
    nag_optax.nadam(0.05),
    nag_optax.adan(0.05, restart="function"),
  ],
  ids=["nesterov", "nadam", "adan"],
)
def test_every_optimizer_converges_on_optaxs_complex_parabola(tx):
  """The gradient is the conjugate of jax.grad's, as optax's own tests pass."""
  start = jnp.array([-1.0, 10.0, 1.0], jnp.complex64)
  _, final, _ = harness.run(
    tx, start, 1000, grad=lambda z: jnp.conj(jax.grad(_parabola)(z)), loss=_parabola
  )
  assert final.dtype == jnp.complex64
  np.testing.assert_allclose(final, (1 + 1j) * np.array([1, -1, 1]), atol=1e-2)


@pytest.mark.parametrize(
  "factory",
  [
    lambda **kw: nag_optax.nesterov(0.1, **kw),
    lambda **kw: nag_optax.nadam(0.1, **kw),
    lambda **kw: nag_optax.adan(0.1, **kw),
  ],
  ids=["nesterov", "nadam", "adan"],
)
def test_accumulator_dtype_sets_the_precision_of_complex_buffers(factory):
  params = {"z": jnp.ones(3, jnp.complex128), "x": jnp.ones(2)}
  state = factory(accumulator_dtype=jnp.float32).init(params)
  buffers = [x for x in jax.tree.leaves(state) if x.shape in {(3,), (2,)}]
  dtypes = {x.dtype for x in buffers if jnp.issubdtype(x.dtype, jnp.inexact)}
  # complex64 momenta, float32 second moments and real leaves' buffers.
  assert dtypes <= {jnp.dtype(jnp.complex64), jnp.dtype(jnp.float32)}
  assert jnp.dtype(jnp.complex64) in dtypes
  with pytest.raises(ValueError, match="accumulator_dtype=bfloat16 cannot hold"):
    factory(accumulator_dtype=jnp.bfloat16).init(params)


@pytest.mark.parametrize(
  "factory", [nag_optax.nesterov, nag_optax.nadam, nag_optax.adan]
)
def test_inject_hyperparams_on_complex_params_needs_a_real_hyperparam_dtype(factory):
  params = jnp.ones(3, jnp.complex64)
  injected = optax.inject_hyperparams(factory)(learning_rate=0.1)
  with pytest.raises(ValueError, match="real number.*hyperparam_dtype"):
    injected.init(params)
  # float64: the scalar dtype of the plain optimizer under the x64 fixture.
  injected = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float64)
  tx = injected(learning_rate=0.1)
  updates, _ = tx.update(params, tx.init(params), params)
  plain, _ = factory(0.1).update(params, factory(0.1).init(params), params)
  np.testing.assert_allclose(updates, plain, rtol=1e-6)
