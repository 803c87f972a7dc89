"""Checks of hyperparameters and trees, with messages that name the culprit.

Numeric hyperparameters are checked only when they are concrete numbers: a
tracer passed in by ``optax.inject_hyperparams`` under ``jit`` is left alone,
so validation never branches on a traced value, and a schedule is only traced
abstractly for the shape of what it returns.
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
  schedule: bool = False,
) -> None:
  """Raises ValueError unless a concrete ``value`` lies in [low, high).

  None is refused, and so is a callable unless ``schedule``: only the
  learning rate and the momentum take schedules. A schedule is traced once
  on an abstract step count (see :func:`check_schedule_output`); tracers
  pass unchecked.
  """
  bracket = "]" if high_inclusive else ")"
  if value is None:
    kind = " or an optax schedule" if schedule else ""
    raise ValueError(
      f"{name} must be a real number in [{low}, {high}{bracket}{kind}, got None."
    )
  if callable(value):
    if not schedule:
      raise ValueError(
        f"{name} must be a real number in [{low}, {high}{bracket}, got the "
        f"callable {value!r}: only learning_rate and momentum take schedules. "
        f"To change {name} between steps, wrap the optimizer in "
        "optax.inject_hyperparams."
      )
    check_schedule_output(name, value)
    return
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


def _not_scalar(name: str, value: object, shape: object) -> ValueError:
  if callable(value):
    return ValueError(
      f"{name} schedule must return a scalar, got shape {shape}: a schedule "
      "maps the int32 step count to one number."
    )
  return ValueError(f"{name} must be a scalar, got an array of shape {shape}.")


def check_schedule_output(name: str, schedule: Callable[[jax.Array], object]) -> None:
  """Raises ValueError if ``schedule`` of a step count is not a scalar.

  The schedule is traced abstractly (``jax.eval_shape``) on an int32 count;
  a schedule that cannot be traced so (one that needs a concrete count) is
  left to the check at ``update``.
  """
  try:
    out = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
  except Exception:  # Any failure: the check at update covers this schedule.
    return
  if not hasattr(out, "shape"):
    raise ValueError(
      f"{name} schedule must return a scalar, got {jax.tree.structure(out)}."
    )
  if out.shape != ():
    raise _not_scalar(name, schedule, out.shape)


def as_schedule(name: str, value: optax.ScalarOrSchedule) -> optax.Schedule:
  """A constant or an optax schedule, as a function of the step count.

  The function raises a ValueError naming ``name`` when the value it would
  return is not a scalar. Shapes are static, so under ``jit`` this is a
  trace-time check: it costs nothing in the compiled step, and it catches
  what construction cannot see (a schedule that needs a concrete count, an
  array injected by ``optax.inject_hyperparams`` under ``jit``).
  """

  def checked(count: jax.typing.ArrayLike) -> jax.typing.ArrayLike:
    out = value(count) if callable(value) else value
    shape = jnp.shape(out)
    if shape != ():
      raise _not_scalar(name, value, shape)
    return out

  return checked


def check_learning_rate(name: str, learning_rate: object) -> None:
  """Raises ValueError if an optimizer's ``learning_rate`` is None.

  None is how the private constructors ask for the bare direction, so the
  public optimizers refuse it before it reaches them.
  """
  if learning_rate is None:
    raise ValueError(
      f"{name}: learning_rate must be a non-negative float or an optax "
      f"schedule, got None. For the update direction without a learning "
      f"rate use nag_optax.scale_by_{name}."
    )


def check_integer(name: str, value: object) -> None:
  """Raises ValueError unless ``value`` is an integer (a tracer passes)."""
  if isinstance(value, jax.core.Tracer):
    return
  array = concrete_value(value)
  if array is None or array.shape != () or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must be an integer, got {value!r}.")


def check_float_params(name: str, params: optax.Params) -> None:
  """Raises TypeError naming the leaf if a parameter is not floating-point.

  An integer or boolean parameter cannot hold a fractional update: it would
  be truncated, to zero for small steps. Complex parameters pass.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.inexact):
      continue
    kind = "integer " if jnp.issubdtype(dtype, jnp.integer) else ""
    where = f"at {jax.tree_util.keystr(path)} " if path else ""
    raise TypeError(
      f"{name}: parameter {where}has {kind}dtype {dtype}; optimizers update "
      "floating-point parameters only (cast it, or mask it out with "
      "optax.masked)."
    )


def check_state(
  name: str,
  state: object,
  state_type: type[_State],
  hint: str = "Call update(grads, state, params): are the arguments swapped?",
) -> _State:
  """``state``, if it is the ``state_type`` init returned; else a ValueError.

  Catches ``update`` called with its arguments in the wrong order, e.g.
  ``update(grads, params, state)`` or ``update(state, grads)``, or with
  another transformation's state; ``hint`` ends the message.
  """
  if isinstance(state, state_type):
    return state
  raise ValueError(
    f"{name}: the state argument of update is a {type(state).__name__}, not "
    f"the {state_type.__name__} that init returns. {hint}"
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
