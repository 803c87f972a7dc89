"""Coupled or decoupled weight decay around a direction-only transform."""

from typing import Any

import optax

from nag_optax import _validation


def with_weight_decay(
  direction: optax.GradientTransformation,
  learning_rate: Any,
  *,
  weight_decay: Any,
  decoupled: bool,
  mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """``direction`` scaled by ``-learning_rate``, with L2 or decoupled decay.

  Coupled: the decay term is added to the gradient before ``direction``
  (PyTorch's ``weight_decay``). Decoupled: it is added to the direction, so
  the update is ``-lr * (d + wd * p)`` (AdamW/NAdamW). A literal zero leaves
  the term out of the graph; arrays from ``inject_hyperparams`` keep it.
  """
  _validation.check_interval("weight_decay", weight_decay, 0.0)
  if _validation.is_static_zero(weight_decay):
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
  decay = optax.add_decayed_weights(weight_decay, mask)
  if decoupled:
    parts = (direction, decay)
  else:
    parts = (decay, direction)
  return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
