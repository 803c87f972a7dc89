"""What every optimizer's update shares, around the algorithm's own step.

An :class:`Algorithm` (Nesterov, NAdam, Adan) says how to initialise its
state and how to take one step from an upcast gradient. :func:`transform`
turns it into an optax transformation and does the rest, the same way for
all: argument checks, the weight-decay mask, the one upcast of the gradient,
coupled decay before the step, :math:`-\\alpha_t` and decoupled or proximal
decay after it, and the cast back to the gradient's dtype. The learning-rate
schedule counts ``state.count``, so the optimizer's state is the
algorithm's own NamedTuple, with or without a learning rate.
"""

from collections.abc import Callable
from typing import Generic
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import optax

from nag_optax import _precision
from nag_optax import _validation
from nag_optax import _weight_decay

_State = TypeVar("_State")


class Algorithm(NamedTuple, Generic[_State]):
  """One optimizer's own part, as :func:`transform` runs it, for its state type.

  Attributes:
    name: the public factory, for error messages.
    state_type: the NamedTuple ``init`` returns; it has an int32 ``count``
      of the updates applied so far.
    init: ``params -> state``.
    step: ``(grads, state, learning_rate, value) -> (output, new_state)``.
      ``grads`` are upcast (float32 or wider) and coupled decay is applied;
      ``learning_rate`` is this step's scalar, or None for a direction-only
      transform; ``value`` is the loss passed to ``update`` (or None).
      ``output`` is the direction, in ``grads``' dtypes.
    state_tree: ``state ->`` a params-shaped buffer the gradient must match.
    applies_learning_rate: whether ``output`` already is the signed update,
      learning rate included (Nesterov's "sutskever" form), instead of a
      direction for the core to scale by :math:`-\\alpha_t`.
  """

  name: str
  state_type: type[_State]
  init: optax.TransformInitFn
  step: Callable[
    [optax.Updates, _State, jax.Array | None, jax.typing.ArrayLike | None],
    tuple[optax.Updates, _State],
  ]
  state_tree: Callable[[_State], optax.Updates]
  applies_learning_rate: bool = False


def transform(
  algorithm: Algorithm[_State],
  learning_rate: optax.ScalarOrSchedule | None = None,
  decay: _weight_decay.WeightDecay = _weight_decay.NO_DECAY,
) -> optax.GradientTransformationExtraArgs:
  """``algorithm`` as an optax transformation, with learning rate and decay.

  With ``learning_rate=None`` the transformation emits the direction (a
  ``scale_by_*``) and takes no decay.
  """
  if learning_rate is None and decay.active:
    raise ValueError(f"{algorithm.name} is a direction: it takes no weight decay.")
  learning_rate_fn = None
  if learning_rate is not None:
    _validation.check_interval("learning_rate", learning_rate, 0.0, schedule=True)
    learning_rate_fn = _validation.as_schedule("learning_rate", learning_rate)

  def init_fn(params):
    _validation.check_float_params(algorithm.name, params)
    return algorithm.init(params)

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    _validation.check_update_args(
      algorithm.name, updates, state, algorithm.state_type, algorithm.state_tree, params
    )
    mask = decay.mask_tree(params, updates)
    lr = None
    if learning_rate_fn is not None:
      lr = jnp.asarray(learning_rate_fn(state.count), _precision.scalar_dtype())
    grads = decay.decayed_gradient(_precision.upcast(updates), params, mask)
    output, new_state = algorithm.step(grads, state, lr, value)
    if lr is not None:  # A direction (no learning rate) takes no decay: see above.
      if not algorithm.applies_learning_rate:
        output = jax.tree.map(lambda d: -_precision.cast_scalar(lr, d) * d, output)
      output = decay.decayed_update(output, params, mask, lr)
    return optax.tree.cast_like(output, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema(decay: jax.typing.ArrayLike, new: jax.Array, old: jax.Array) -> jax.Array:
  """``decay * old + (1 - decay) * new`` in ``new``'s dtype (a moment's update)."""
  d = _precision.cast_scalar(jnp.asarray(decay, _precision.scalar_dtype()), new)
  return d * old.astype(new.dtype) + (1.0 - d) * new
