"""Finding one optimizer's state inside a nested optax state."""

from typing import TypeVar

import jax
import optax

_State = TypeVar("_State")


def find_all(opt_state: optax.OptState, state_type: type[_State]) -> list[_State]:
  """Every ``state_type`` inside ``opt_state``, in tree order.

  Looks through any wrapper that keeps its inner state as a pytree child
  (``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``,
  ``optax.masked``, ``nag_optax.accumulate_gradients`` ...).
  """
  is_state = lambda x: isinstance(x, state_type)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def find_one(
  opt_state: optax.OptState, state_type: type[_State], *, caller: str, what: str
) -> _State:
  """The one ``state_type`` inside ``opt_state``; a ValueError for 0 or 2+."""
  found = find_all(opt_state, state_type)
  if len(found) != 1:
    raise ValueError(
      f"{caller} needs exactly one {what} state in opt_state, found {len(found)}."
    )
  return found[0]
