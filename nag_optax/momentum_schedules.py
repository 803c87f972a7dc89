r"""Momentum schedules for Nesterov's method, as optax schedules.

Each function returns ``schedule(count) -> momentum``. The count is the
momentum count of :func:`nag_optax.nesterov`: the number of updates since the
start or the last restart, so that the look-ahead taken after ``k`` updates
uses ``schedule(k)`` (:math:`\Theta_k = \theta_k + \mu_k v_k`) and the next
velocity uses the same value. Values are computed in float32 (float64 under
``jax_enable_x64``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _precision
from nag_optax import _validation

__all__ = ["accelerated", "dozat", "fista", "strongly_convex", "sutskever"]


def _as_float(count: jax.typing.ArrayLike) -> jax.Array:
  return jnp.asarray(count).astype(_precision.scalar_dtype())


def accelerated() -> optax.Schedule:
  r"""The classic convex schedule :math:`\mu_k = (k - 1) / (k + 2)`.

  :math:`\mu_0 = \mu_1 = 0`, then 1/4, 2/5, ... (:math:`\mu_0` is never used
  since the velocity starts at zero). Gives the optimal :math:`O(1/k^2)` rate
  on smooth convex problems; pair with adaptive restart on strongly convex
  ones.

  Returns:
    A schedule ``count -> momentum`` for the ``momentum`` argument of
    :func:`nag_optax.nesterov` and :func:`nag_optax.scale_by_nesterov`.

  Example:
    >>> import nag_optax
    >>> from nag_optax import momentum_schedules
    >>> schedule = momentum_schedules.accelerated()
    >>> [round(float(schedule(k)), 4) for k in range(5)]
    [0.0, 0.0, 0.25, 0.4, 0.5]
    >>> tx = nag_optax.nesterov(0.1, momentum=schedule)

  References:
    Nesterov, A method of solving a convex programming problem with
    convergence rate O(1/k^2), 1983.
  """

  def schedule(count):
    k = _as_float(count)
    return jnp.maximum(k - 1.0, 0.0) / (k + 2.0)

  return schedule


def fista(num_steps: int = 100_000) -> optax.Schedule:
  r"""Nesterov's 1983 / FISTA sequence :math:`\mu_k = (t_k - 1) / t_{k+1}`.

  .. math::

    t_1 = 1, \qquad t_{k+1} = \frac{1 + \sqrt{1 + 4 t_k^2}}{2}

  The :math:`t_k` are tabulated exactly (float64 recurrence) for
  :math:`k \le` ``num_steps``; beyond, :math:`t_k` continues with its
  asymptotic expansion :math:`t_N + (k - N)/2 + \tfrac14 \ln(k/N)`, whose
  error in :math:`\mu_k` is below 1e-9 there.

  Args:
    num_steps: how many :math:`t_k` to tabulate.

  Returns:
    A schedule ``count -> momentum``.

  Example:
    >>> from nag_optax import momentum_schedules
    >>> schedule = momentum_schedules.fista()
    >>> [round(float(schedule(k)), 4) for k in range(5)]
    [0.0, 0.0, 0.2818, 0.434, 0.5311]

  References:
    Beck and Teboulle, A Fast Iterative Shrinkage-Thresholding Algorithm for
    Linear Inverse Problems, 2009, https://doi.org/10.1137/080716542
  """
  _validation.check_positive_int("num_steps", num_steps, allow_none=False)
  table = np.empty(num_steps + 2)
  table[0] = 1.0  # Unused: stands for t_0 so that table[k] = t_k.
  table[1] = 1.0
  for k in range(1, num_steps + 1):
    table[k + 1] = (1.0 + np.sqrt(1.0 + 4.0 * table[k] ** 2)) / 2.0
  last = num_steps + 1

  def t(k):
    exact = jnp.asarray(table, _precision.scalar_dtype())[jnp.clip(k, 0, last)]
    k_float = _as_float(k)
    beyond = (
      table[last]
      + (k_float - last) / 2.0
      + 0.25 * jnp.log(jnp.maximum(k_float, last) / last)
    )
    return jnp.where(k <= last, exact, beyond)

  def schedule(count):
    k = jnp.maximum(jnp.asarray(count, jnp.int32), 1)
    return jnp.where(jnp.asarray(count) < 1, 0.0, (t(k) - 1.0) / t(k + 1))

  return schedule


def strongly_convex(condition_number: jax.typing.ArrayLike) -> optax.Schedule:
  r"""Constant :math:`\mu = (\sqrt\kappa - 1) / (\sqrt\kappa + 1)`.

  With step size :math:`1/L` on an :math:`L`-smooth, :math:`m`-strongly convex
  function (:math:`\kappa = L/m`), NAG needs :math:`O(\sqrt\kappa \log
  1/\epsilon)` iterations against :math:`O(\kappa \log 1/\epsilon)` for
  gradient descent, matching the first-order lower bound.

  Args:
    condition_number: :math:`\kappa \ge 1`.

  Returns:
    A constant schedule ``count -> momentum``.

  Example:
    >>> from nag_optax import momentum_schedules
    >>> schedule = momentum_schedules.strongly_convex(100.0)  # (10 - 1) / (10 + 1)
    >>> round(float(schedule(0)), 4), round(float(schedule(1000)), 4)
    (0.8182, 0.8182)

  References:
    Nesterov, Introductory Lectures on Convex Optimization, 2004, sec. 2.2.
  """
  _validation.check_interval("condition_number", condition_number, 1.0)

  def schedule(count):
    root = jnp.sqrt(jnp.asarray(condition_number, _precision.scalar_dtype()))
    return jnp.broadcast_to((root - 1.0) / (root + 1.0), jnp.shape(count))

  return schedule


def sutskever(
  max_momentum: jax.typing.ArrayLike = 0.999,
  *,
  period: int = 250,
  total_steps: int | None = None,
  final_momentum: jax.typing.ArrayLike = 0.9,
  final_steps: int = 1000,
) -> optax.Schedule:
  r"""Sutskever et al.'s :math:`\mu_k = \min(1 - 2^{-1 - \log_2(\lfloor k /
  250 \rfloor + 1)}, \mu_{max})`.

  That is :math:`\min(1 - 1 / (2 (\lfloor k/250 \rfloor + 1)), \mu_{max})`:
  0.5, 0.75, 0.833, ... With ``total_steps`` set, the momentum drops to
  ``final_momentum`` for the last ``final_steps`` updates, as the paper did.

  Args:
    max_momentum: the cap :math:`\mu_{max}` in [0, 1).
    period: steps per increase (250 in the paper).
    total_steps: length of training, to enable the final drop.
    final_momentum: momentum for the final steps.
    final_steps: how many final steps use ``final_momentum``.

  Returns:
    A schedule ``count -> momentum``.

  Example:
    >>> from nag_optax import momentum_schedules
    >>> schedule = momentum_schedules.sutskever(0.99, period=2)
    >>> [round(float(schedule(k)), 4) for k in range(0, 10, 2)]
    [0.5, 0.75, 0.8333, 0.875, 0.9]

  References:
    Sutskever et al., On the importance of initialization and momentum in deep
    learning, 2013, https://proceedings.mlr.press/v28/sutskever13.html
  """
  _validation.check_interval("max_momentum", max_momentum, 0.0, 1.0)
  _validation.check_interval("final_momentum", final_momentum, 0.0, 1.0)
  _validation.check_positive_int("period", period, allow_none=False)
  _validation.check_positive_int("total_steps", total_steps)
  _validation.check_positive_int("final_steps", final_steps, allow_none=False)

  def schedule(count):
    dtype = _precision.scalar_dtype()
    blocks = jnp.floor(_as_float(count) / period) + 1.0
    mu = jnp.minimum(1.0 - 1.0 / (2.0 * blocks), jnp.asarray(max_momentum, dtype))
    if total_steps is not None:
      final = jnp.asarray(count) >= total_steps - final_steps
      mu = jnp.where(final, jnp.asarray(final_momentum, dtype), mu)
    return mu

  return schedule


def dozat(
  b1: jax.typing.ArrayLike = 0.9, momentum_decay: jax.typing.ArrayLike = 0.004
) -> optax.Schedule:
  r"""Dozat's NAdam warm-up :math:`\mu_t = b_1 (1 - \tfrac12 \cdot 0.96^{t
  \psi})`.

  ``schedule(k)`` is :math:`\mu_{k+1}` in PyTorch's 1-based step notation, so
  that the look-ahead after step :math:`t` uses :math:`\mu_{t+1}` and the
  buffer update of step :math:`t` uses :math:`\mu_t`, as ``torch.optim.NAdam``
  does. PyTorch's default :math:`\psi` = 0.004 (Keras 3: 1).

  Args:
    b1: the asymptotic momentum :math:`b_1` in [0, 1).
    momentum_decay: :math:`\psi \ge 0`; ``inf`` gives the constant
      :math:`b_1` (optax's ``nadam``).

  Returns:
    A schedule ``count -> momentum``, the :math:`\\mu_{k+1}` of NAdam.

  Example:
    >>> from nag_optax import momentum_schedules
    >>> schedule = momentum_schedules.dozat()
    >>> [round(float(schedule(k)), 4) for k in (0, 1, 250, 1000)]
    [0.4501, 0.4501, 0.4681, 0.5179]

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
  """
  _validation.check_interval("b1", b1, 0.0, 1.0)
  _validation.check_interval(
    "momentum_decay", momentum_decay, 0.0, np.inf, high_inclusive=True
  )

  def schedule(count):
    dtype = _precision.scalar_dtype()
    t = _as_float(count) + 1.0
    psi = jnp.asarray(momentum_decay, dtype)
    return jnp.asarray(b1, dtype) * (1.0 - 0.5 * jnp.power(0.96, t * psi))

  return schedule
