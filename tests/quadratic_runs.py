"""Running nag_optax optimizers on the ill-conditioned quadratics of the notes.

f(x) = 1/2 sum lambda_i x_i^2 (numpy_reference.quadratic), x_0 = 1, float64,
one jitted scan per optimizer; iterations are counted on the non-extrapolated
iterate theta (nag_optax.nesterov_eval_params), as the reference table is, or
on another point of the caller's choosing (``point``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax
from tests import numpy_reference as ref


def run(tx, kappa, steps, *, point=nag_optax.nesterov_eval_params):
  """Returns (f(point(state_k, x_k)) for k = 1..steps, f(x_0), final state).

  ``point`` defaults to the NAG iterate theta; pass ``lambda state, x: x`` for
  an optimizer without a look-ahead (e.g. Adan).
  """
  lam_np, f_np, _ = ref.quadratic(kappa)
  with jax.enable_x64(True):
    lam = jnp.asarray(lam_np)
    f = lambda x: 0.5 * jnp.sum(lam * x * x)

    @jax.jit
    def trajectory(x0):
      def step(carry, _):
        x, state = carry
        updates, state = tx.update(lam * x, state, x, value=f(x))
        x = optax.apply_updates(x, updates)
        return (x, state), f(point(state, x))

      (_, state), values = jax.lax.scan(step, (x0, tx.init(x0)), length=steps)
      return values, state

    values, state = trajectory(jnp.ones_like(lam))
    return np.asarray(values), f_np(np.ones_like(lam_np)), state


def count(tx, kappa, tol, steps):
  values, f0, state = run(tx, kappa, steps)
  return ref.iterations_to_tol(values, f0, tol), state
