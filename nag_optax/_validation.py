"""Checks of hyperparameters and trees, with messages that name the culprit.

Numeric hyperparameters are checked only when they are concrete numbers: a
schedule, or a tracer passed in by ``optax.inject_hyperparams`` under ``jit``,
is left alone, so validation never branches on a traced value.
"""

from collections.abc import Callable
from collections.abc import Iterable
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

_State = TypeVar("_State")


def concrete_value(value: object) -> np.ndarray | None:
  """Returns ``value`` as a NumPy array if it is a concrete number, else None."""
  if value is None or callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_interval(
  name: str,
  value: object,
  low: float,
  high: float = np.inf,
  *,
  high_inclusive: bool = False,
) -> None:
  """Raises ValueError unless a concrete ``value`` lies in [low, high)."""
  array = concrete_value(value)
  if array is None:
    return
  if array.shape != ():
    raise ValueError(f"{name} must be a scalar, got an array of shape {array.shape}.")
  if np.issubdtype(array.dtype, np.complexfloating):
    raise ValueError(
      f"{name} must be a real number, got {value!r}. (With complex params, "
      "optax.inject_hyperparams casts hyperparameters to their dtype unless "
      "given hyperparam_dtype=jnp.float32.)"
    )
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  v = float(array)
  inside = low <= v and (v <= high if high_inclusive else v < high)
  if not inside:
    bracket = "]" if high_inclusive else ")"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {v!r}.")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")


def check_positive_int(name: str, value: object, *, allow_none: bool = True) -> None:
  """Raises ValueError unless ``value`` is an integer >= 1 (or None if allowed)."""
  if value is None and allow_none:
    return
  array = concrete_value(value)
  if array is None and value is not None and not callable(value):
    return  # A tracer: injected by inject_hyperparams, checked at init.
  if array is None or array.shape != () or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if int(array) < 1:
    raise ValueError(f"{name} must be a positive integer, got {int(array)}.")


def is_static_zero(value: object) -> bool:
  """True only for a literal Python/NumPy zero known at construction.

  Used to leave an unused term (weight decay, Adan's clipping) out of the
  graph. Arrays (what ``inject_hyperparams`` passes) never qualify, so
  injected values always keep the term and the graph does not change between
  ``init`` and ``update``.
  """
  return (
    isinstance(value, (int, float, np.number))
    and not isinstance(value, bool)
    and value == 0
  )


def check_accumulator_dtype(
  accumulator_dtype: jax.typing.DTypeLike | None,
) -> jnp.dtype | None:
  """``accumulator_dtype`` as a dtype (None stays None); refuses non-floats.

  An integer or boolean buffer would silently truncate the moments, and a
  complex one is chosen per leaf (see :func:`nag_optax._precision.zeros_like`).
  """
  if accumulator_dtype is None:
    return None
  try:
    dtype = jnp.dtype(accumulator_dtype)
  except TypeError as error:
    raise ValueError(
      f"accumulator_dtype must be a float dtype, got {accumulator_dtype!r}."
    ) from error
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"accumulator_dtype must be a float dtype, got {dtype}.")
  return dtype


def check_trees_match(
  what: str, tree: optax.Params, reference_name: str, reference: optax.Params
) -> None:
  """Raises ValueError if two trees differ in structure or leaf shapes."""
  structure = jax.tree.structure(tree)
  reference_structure = jax.tree.structure(reference)
  # jaxlib ships no stub for its C++ PyTreeDef: mypy cannot see its __eq__.
  if structure != reference_structure:  # type: ignore[operator]
    raise ValueError(
      f"The {what} tree does not match the {reference_name} tree.\n"
      f"  {what}: {structure}\n  {reference_name}: {reference_structure}"
    )
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, leaf), ref in zip(
    paths_and_leaves, jax.tree.leaves(reference), strict=True
  ):
    if np.shape(leaf) != np.shape(ref):
      raise ValueError(
        f"The {what} leaf at {jax.tree_util.keystr(path)} has shape "
        f"{np.shape(leaf)}, but the {reference_name} has shape {np.shape(ref)}."
      )


def as_schedule(value: optax.ScalarOrSchedule) -> optax.Schedule:
  """A constant or an optax schedule, as a function of the step count."""
  if callable(value):
    return value
  return lambda count: value


def check_state(name: str, state: object, state_type: type[_State]) -> _State:
  """``state``, if it is the ``state_type`` init returned; else a ValueError.

  Catches ``update`` called with its arguments in the wrong order, e.g.
  ``update(grads, params, state)`` or ``update(state, grads)``.
  """
  if isinstance(state, state_type):
    return state
  raise ValueError(
    f"{name}: the state argument of update is a {type(state).__name__}, not "
    f"the {state_type.__name__} that init returns. Call "
    "update(grads, state, params): are the arguments swapped?"
  )


def check_update_args(
  name: str,
  updates: optax.Updates,
  state: optax.OptState,
  state_type: type[_State],
  state_tree: Callable[[_State], optax.Updates],
  params: optax.Params | None,
) -> None:
  """The checks every ``update`` makes before it computes anything.

  ``state`` must be a ``state_type``; the gradient must match the state's
  params-shaped buffer (``state_tree(state)``) and, when given, ``params``
  must match the gradient. All of it runs in Python at trace time: none of
  it is in the compiled step.
  """
  checked = check_state(name, state, state_type)
  check_trees_match("gradient", updates, "optimizer state", state_tree(checked))
  if params is not None:
    check_trees_match("params", params, "gradient", updates)
