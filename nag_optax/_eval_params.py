"""Recovering the NAG iterate theta from the stored look-ahead parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _nesterov
from nag_optax import _precision
from nag_optax import _substate
from nag_optax import _validation


def _lookahead_scale(
  includes_lr: jax.Array, learning_rate: jax.typing.ArrayLike | None
) -> jax.typing.ArrayLike:
  """What multiplies ``lookahead * trace``: 1, or the learning rate applied
  after a bare ``scale_by_nesterov``. Checked when the state is concrete;
  inside ``jit`` the choice is made in the graph."""
  known = _validation.concrete_value(includes_lr)
  if known is None:
    missing = jnp.nan if learning_rate is None else learning_rate
    return jnp.where(includes_lr, 1.0, missing)
  if np.all(known):
    if learning_rate is not None:
      raise ValueError(
        "learning_rate is only for a bare scale_by_nesterov; nesterov() "
        "records its own."
      )
    return 1.0
  if learning_rate is None:
    raise ValueError(
      "This state comes from scale_by_nesterov, which does not know the "
      "learning rate applied after it: pass learning_rate= (that of the "
      "last step)."
    )
  return learning_rate


def nesterov_eval_params(
  opt_state: optax.OptState,
  params: optax.Params,
  *,
  learning_rate: jax.typing.ArrayLike | None = None,
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
      the last step. The state says which it is
      (``lookahead_includes_lr``): outside ``jit`` a missing or superfluous
      ``learning_rate`` is a ValueError; inside ``jit`` (where the state is
      traced) it is ignored for ``nesterov``, and a bare
      ``scale_by_nesterov`` without it gives NaN.

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
  state = _substate.find_one(
    opt_state,
    _nesterov.ScaleByNesterovState,
    caller="nesterov_eval_params",
    what="Nesterov",
  )
  scale = _lookahead_scale(state.lookahead_includes_lr, learning_rate)

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
