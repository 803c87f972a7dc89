"""Adaptive restart criteria (O'Donoghue and Candes, 2015), computed in-graph.

Shared by every optimizer of the package that offers ``restart``: a restart
zeroes the momentum and sends the momentum schedule back to its start.
"""

from typing import Any

import jax
import jax.numpy as jnp

from nag_optax import _validation

RESTART_SCHEMES = (None, "gradient", "function")


def validate(restart: Any, restart_every: Any) -> None:
  _validation.check_choice("restart", restart, RESTART_SCHEMES)
  _validation.check_positive_int("restart_every", restart_every)


def check_value(restart: Any, value: Any) -> None:
  if restart == "function" and value is None:
    raise ValueError(
      'restart="function" needs the loss: call update(grads, state, params, '
      "value=loss). optax.value_and_grad_from_state or jax.value_and_grad give it."
    )


def tree_vdot(a: Any, b: Any) -> jax.Array:
  """Global inner product over all leaves, accumulated in float32 or wider."""
  terms = [
    jnp.vdot(x, y.astype(x.dtype))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  ]
  if not terms:
    return jnp.zeros([], jnp.float32)
  return sum(terms[1:], terms[0])


def should_restart(
  restart: Any,
  restart_every: Any,
  *,
  grads: Any,
  step: Any,
  value: Any,
  prev_value: jax.Array,
  momentum_count: jax.Array,
) -> jax.Array:
  r"""Whether to restart after this update, as a boolean scalar array.

  * ``"gradient"``: the step just taken goes uphill for the gradient that
    produced it, :math:`\nabla f(y_{k-1})^\top (x_k - x_{k-1}) > 0`. No extra
    evaluation is needed; under ``pmap`` or sharding the inner product is over
    replicated (already averaged) gradients, so every device decides alike.
  * ``"function"``: the loss went up, ``value > prev_value``.
  * ``restart_every=K``: also restart after every K momentum steps.

  Args:
    restart: None, "gradient" or "function".
    restart_every: None or a positive integer.
    grads: the gradient used for this update (float32 or wider leaves).
    step: the change of the non-extrapolated iterate, same tree as ``grads``.
    value: the current loss (needed for "function").
    prev_value: the previous loss.
    momentum_count: updates since the last restart, before this one.

  Returns:
    A boolean scalar.
  """
  decision = jnp.zeros([], bool)
  if restart == "gradient":
    decision = tree_vdot(grads, step) > 0
  elif restart == "function":
    decision = jnp.asarray(value, prev_value.dtype) > prev_value
  if restart_every is not None:
    decision = decision | (momentum_count + 1 >= restart_every)
  return decision
