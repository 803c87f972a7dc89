"""Checks of hyperparameters and trees, with messages that name the culprit.

Numeric hyperparameters are checked only when they are concrete numbers: a
schedule, or a tracer passed in by ``optax.inject_hyperparams`` under ``jit``,
is left alone, so validation never branches on a traced value.
"""

from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def concrete_value(value: Any) -> np.ndarray | None:
  """Returns ``value`` as a NumPy array if it is a concrete number, else None."""
  if value is None or callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_interval(
  name: str,
  value: Any,
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
  if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
    array.dtype, np.complexfloating
  ):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  v = float(array)
  inside = low <= v and (v <= high if high_inclusive else v < high)
  if not inside:
    bracket = "]" if high_inclusive else ")"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {v!r}.")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")


def check_positive_int(name: str, value: Any, *, allow_none: bool = True) -> None:
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


def is_static_zero(value: Any) -> bool:
  """True only for a literal Python/NumPy zero known at construction.

  Used to leave an unused weight-decay term out of the graph. Arrays (what
  ``inject_hyperparams`` passes) never qualify, so injected values always keep
  the term and the graph does not change between ``init`` and ``update``.
  """
  return (
    isinstance(value, (int, float, np.number))
    and not isinstance(value, bool)
    and value == 0
  )


def check_trees_match(
  what: str, tree: Any, reference_name: str, reference: Any
) -> None:
  """Raises ValueError if two trees differ in structure or leaf shapes."""
  structure = jax.tree.structure(tree)
  reference_structure = jax.tree.structure(reference)
  if structure != reference_structure:
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


def as_schedule(value: Any) -> Callable[[jax.Array], Any]:
  """A constant or an optax schedule, as a function of the step count."""
  if callable(value):
    return value
  return lambda count: value
