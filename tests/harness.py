"""What the tests share: float64 test problems and one jitted-scan runner.

The float64 switch is the ``x64`` fixture of ``conftest.py``. Everything
here is test code; the references the optimizers are checked against live
in ``numpy_reference.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from nag_optax import _substate
from tests import numpy_reference as ref

STEPS = 40
TIGHT = 1e-12  # float64 agreement of two transcriptions of the same rule
_A = np.random.default_rng(0).normal(size=(6, 6)) / 3.0
HESSIAN = _A @ _A.T + 0.1 * np.eye(6)
P0 = np.linspace(-1.0, 1.5, 6)


def grad_np(p):
  """Gradient of 1/2 p'Hp + sum cos(p): a non-quadratic smooth test function."""
  return HESSIAN @ p - np.sin(p)


def grad_jnp(p):
  return jnp.asarray(HESSIAN) @ p - jnp.sin(p)


def max_dev(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))


def run(tx, params, steps, *, grad=None, loss=None, record=None):
  """``steps`` updates of ``tx`` from ``params``, in one jitted ``lax.scan``.

  Each step takes the gradient at the current params, ``grad(params)`` or
  else ``jax.grad(loss)(params)``; with ``loss`` its value is also passed as
  ``update(..., value=loss(params))``. ``record(params, state)`` (default:
  the params) is kept after every step.

  Returns:
    (the records stacked over the steps, the final params, the final state).
  """
  grad = jax.grad(loss) if grad is None else grad
  record = (lambda p, state: p) if record is None else record

  @jax.jit
  def scan(params):
    def step(carry, _):
      params, state = carry
      extra = {} if loss is None else {"value": loss(params)}
      updates, state = tx.update(grad(params), state, params, **extra)
      params = optax.apply_updates(params, updates)
      return (params, state), record(params, state)

    (params, state), records = jax.lax.scan(
      step, (params, tx.init(params)), length=steps
    )
    return records, params, state

  return scan(jax.tree.map(jnp.asarray, params))


def trajectory(tx, *, grad=grad_jnp, p0=P0, steps=STEPS):
  """The params after each step on the test function, and the final state."""
  assert jax.config.jax_enable_x64, "use the x64 fixture"
  params, _, state = run(tx, p0, steps, grad=grad)
  return params, state


def quadratic(tx, kappa, steps, *, point=nag_optax.nesterov_eval_params):
  """On the quadratic of ``numpy_reference.quadratic(kappa)`` from x_0 = 1.

  Returns (f(point(state_k, x_k)) for k = 1..steps, f(x_0), final state).
  ``point`` defaults to the NAG iterate theta, as the reference counts are
  taken; pass ``lambda state, x: x`` for an optimizer without a look-ahead
  (e.g. Adan).
  """
  assert jax.config.jax_enable_x64, "use the x64 fixture"
  lam_np, f_np, _ = ref.quadratic(kappa)
  lam = jnp.asarray(lam_np)
  f = lambda x: 0.5 * jnp.sum(lam * x * x)
  values, _, state = run(
    tx,
    np.ones_like(lam_np),
    steps,
    grad=lambda x: lam * x,
    loss=f,
    record=lambda x, state: f(point(state, x)),
  )
  return np.asarray(values), f_np(np.ones_like(lam_np)), state


def count(tx, kappa, tol, steps):
  """Iterations to f <= tol f(x_0) on the quadratic (None if never), state."""
  values, f0, state = quadratic(tx, kappa, steps)
  return ref.iterations_to_tol(values, f0, tol), state


def inner(opt_state, state_type):
  """The one ``state_type`` inside a (possibly wrapped) optimizer state."""
  return _substate.find_one(opt_state, state_type, caller="test", what="such")
