"""Adaptive restart (O'Donoghue and Candes, 2015), computed in-graph.

One :class:`Restart` serves every optimizer of the package that offers
``restart``: it owns the state fields ``momentum_count``, ``restarts`` and
``prev_value`` (their initial values and their advance), the decision, and
the zeroing of the momentum buffers. A restart zeroes the momentum and sends
the momentum schedule (or bias correction) back to its start.
"""

from typing import Protocol
from typing import TypeVar

import jax
import jax.numpy as jnp
import optax

from nag_optax import _precision
from nag_optax import _validation

RESTART_SCHEMES = (None, "gradient", "function")

_Tree = TypeVar("_Tree")


class RestartState(Protocol):
  """The restart fields of an optimizer state (see :func:`init_fields`)."""

  @property
  def momentum_count(self) -> jax.Array: ...

  @property
  def restarts(self) -> jax.Array: ...

  @property
  def prev_value(self) -> jax.Array: ...


def init_fields() -> dict[str, jax.Array]:
  """The restart fields of a fresh state (keyword arguments of its class).

  ``momentum_count``: updates since the start or the last restart (int32);
  ``restarts``: restarts so far (int32); ``prev_value``: the loss passed at
  the previous update, +inf before the first (float32 or wider).
  """
  return {
    "momentum_count": jnp.zeros([], jnp.int32),
    "restarts": jnp.zeros([], jnp.int32),
    "prev_value": jnp.full([], jnp.inf, _precision.scalar_dtype()),
  }


class Restart:
  """One optimizer's restart scheme, validated at construction."""

  def __init__(self, scheme: str | None, every: int | None):
    _validation.check_choice("restart", scheme, RESTART_SCHEMES)
    _validation.check_positive_int("restart_every", every)
    self.scheme = scheme
    self.every = every
    self.enabled = scheme is not None or every is not None

  def check_value(self, value: jax.typing.ArrayLike | None) -> None:
    """Raises a ValueError naming the fix if the function scheme lacks the loss."""
    if self.scheme == "function" and value is None:
      raise ValueError(
        'restart="function" needs the loss: call update(grads, state, params, '
        "value=loss). optax.value_and_grad_from_state or jax.value_and_grad "
        "give it."
      )

  def decide(
    self,
    state: RestartState,
    *,
    grads: optax.Updates,
    step: optax.Updates,
    value: jax.typing.ArrayLike | None,
  ) -> jax.Array:
    r"""Whether to restart after this update, as a boolean scalar array.

    * ``"gradient"``: the step just taken goes uphill for the gradient that
      produced it, :math:`\mathrm{Re}\,\langle \nabla f(y_{k-1}), x_k -
      x_{k-1}\rangle > 0` (the real part of the conjugated inner product, so
      complex parameters restart as their real and imaginary parts would).
      No extra evaluation is needed; under ``pmap`` or sharding the inner
      product is over replicated (already averaged) gradients, so every
      device decides alike.
    * ``"function"``: the loss went up, ``value > state.prev_value``.
    * ``restart_every=K``: also restart after every K momentum steps.

    Args:
      state: the optimizer state before this update (its restart fields).
      grads: the gradient used for this update (float32 or wider leaves).
      step: the change of the non-extrapolated iterate, same tree as
        ``grads`` (only read by the gradient scheme).
      value: the current loss (only read by the function scheme).

    Returns:
      A boolean scalar.
    """
    decision = jnp.zeros([], bool)
    if self.scheme == "gradient":
      decision = jnp.real(optax.tree.vdot(grads, step)) > 0
    elif self.scheme == "function":
      decision = jnp.asarray(value, state.prev_value.dtype) > state.prev_value
    if self.every is not None:
      decision = decision | (state.momentum_count + 1 >= self.every)
    return decision

  def reset(self, restart_now: jax.Array, buffers: _Tree) -> _Tree:
    """``buffers`` zeroed where ``restart_now``, else unchanged."""
    if not self.enabled:
      return buffers
    return jax.tree.map(lambda x: jnp.where(restart_now, jnp.zeros_like(x), x), buffers)

  def advance(
    self,
    state: RestartState,
    restart_now: jax.Array,
    value: jax.typing.ArrayLike | None,
  ) -> dict[str, jax.Array]:
    """The restart fields after this update (keyword arguments of the state)."""
    return {
      "momentum_count": jnp.where(
        restart_now, 0, optax.safe_increment(state.momentum_count)
      ).astype(jnp.int32),
      "restarts": state.restarts + restart_now.astype(jnp.int32),
      "prev_value": (
        jnp.asarray(value, state.prev_value.dtype)
        if self.scheme == "function"
        else state.prev_value
      ),
    }
