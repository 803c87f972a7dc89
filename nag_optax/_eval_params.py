"""Recovering the NAG iterate theta from the stored look-ahead parameters."""

from typing import Any

import jax
import optax

from nag_optax import _nesterov
from nag_optax import _precision

_STATES = (_nesterov.ScaleByNesterovState,)


def _find_nesterov_states(opt_state: Any) -> list[Any]:
  is_state = lambda x: isinstance(x, _STATES)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def nesterov_eval_params(
  opt_state: Any, params: optax.Params, *, learning_rate: Any = None
) -> optax.Params:
  r"""The NAG iterate :math:`\theta_t` behind the stored parameters.

  Every ``nesterov=True`` optimizer stores the look-ahead point
  :math:`\Theta_t = \theta_t + \mu_t v_t` where the next gradient is taken
  (Bengio et al. 2012). The sequence that NAG's convergence theory is about,
  and usually the better point to evaluate or ship, is :math:`\theta_t`:

  .. math::

    \theta_t = \Theta_t - \mu_t v_t

  This function finds the Nesterov state anywhere inside ``opt_state``
  (``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``,
  ``optax.masked``, ``nag_optax.accumulate_gradients`` ...) and applies the
  correction for either form, with any momentum or learning-rate schedule.
  With the "pytorch" form and a learning-rate schedule it returns the point
  before the last look-ahead, :math:`\Theta_t + \alpha_{t-1}\mu_t m_t`.

  Args:
    opt_state: the optimizer state holding exactly one Nesterov state.
    params: the parameters stored alongside it (:math:`\Theta_t`).
    learning_rate: only for a bare :func:`nag_optax.scale_by_nesterov`, which
      does not know the learning rate applied after it: the learning rate of
      the last step.

  Returns:
    :math:`\theta_t`, with the structure and dtypes of ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.nesterov(0.1, momentum=0.9)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state)
    >>> params = optax.apply_updates(params, updates)
    >>> print(nag_optax.nesterov_eval_params(state, params))
    [0.8]
  """
  states = _find_nesterov_states(opt_state)
  if len(states) != 1:
    raise ValueError(
      "nesterov_eval_params needs exactly one Nesterov state in opt_state, "
      f"found {len(states)}."
    )
  (state,) = states
  if isinstance(state, _nesterov.NesterovState):
    if learning_rate is not None:
      raise ValueError(
        "learning_rate is only for a bare scale_by_nesterov; nesterov() "
        "records its own."
      )
    scale = 1.0
  else:
    if learning_rate is None:
      raise ValueError(
        "This state comes from scale_by_nesterov, which does not know the "
        "learning rate applied after it: pass learning_rate= (that of the "
        "last step)."
      )
    scale = learning_rate

  masked_node = optax.MaskedNode

  def correct(trace, param):
    if isinstance(trace, masked_node):
      return param
    dtype = _precision.compute_dtype(param.dtype)
    offset = (scale * state.lookahead).astype(dtype) * trace.astype(dtype)
    return (param.astype(dtype) - offset).astype(param.dtype)

  try:
    return jax.tree.map(
      correct,
      state.trace,
      params,
      is_leaf=lambda x: isinstance(x, masked_node),
    )
  except ValueError as error:
    raise ValueError(
      f"params do not match the Nesterov state's momentum tree: {error}"
    ) from error
