"""NAdam exactly as ``torch.optim.NAdam``: Dozat's momentum schedule included."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax import _core
from nag_optax import _precision
from nag_optax import _validation
from nag_optax import _weight_decay
from nag_optax import momentum_schedules


class ScaleByNadamState(NamedTuple):
  """State of :func:`scale_by_nadam` and :func:`nadam`.

  Attributes:
    count: steps taken (int32); also drives the learning-rate schedule.
    mu_product: :math:`\\prod_{i \\le t} \\mu_i` (float32 or wider).
    mu: first moment :math:`m_t`.
    nu: second moment :math:`v_t` (real for complex parameters).

  Example:
    >>> import jax.numpy as jnp
    >>> import nag_optax
    >>> state = nag_optax.scale_by_nadam().init({"w": jnp.zeros(2)})
    >>> type(state).__name__, state._fields
    ('ScaleByNadamState', ('count', 'mu_product', 'mu', 'nu'))
  """

  # mypy flags a field named count (it shadows tuple.count), but the name is
  # optax's convention: optax.tree.get(state, "count") reads it.
  count: jax.Array  # type: ignore[assignment]
  mu_product: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class _Coefficients(NamedTuple):
  """Step t's scalars of the rule, float32 or wider."""

  t: jax.Array  # the step, 1-based (int32)
  mu_product: jax.Array  # prod_{i <= t} mu_i
  bias_correction2: jax.Array  # 1 - b2^t
  grad_coef: jax.Array  # (1 - mu_t) / (1 - prod_{i <= t} mu_i)
  momentum_coef: jax.Array  # mu_{t+1} / (1 - prod_{i <= t+1} mu_i)


def _coefficients(
  schedule: optax.Schedule, b2: jax.typing.ArrayLike, state: ScaleByNadamState
) -> _Coefficients:
  scalar = _precision.scalar_dtype()
  t = jnp.asarray(optax.safe_increment(state.count))
  mu_t = jnp.asarray(schedule(state.count))  # Dozat's mu_t; schedule(k) = mu_{k+1}
  mu_next = jnp.asarray(schedule(t))
  mu_product = state.mu_product * mu_t
  return _Coefficients(
    t=t,
    mu_product=mu_product.astype(scalar),
    bias_correction2=1.0 - jnp.asarray(b2, scalar) ** t.astype(scalar),
    grad_coef=(1.0 - mu_t) / (1.0 - mu_product),
    momentum_coef=mu_next / (1.0 - mu_product * mu_next),
  )


def _direction(
  k: _Coefficients, eps: jax.typing.ArrayLike, g: jax.Array, m: jax.Array, v: jax.Array
) -> jax.Array:
  c = lambda x: _precision.cast_scalar(jnp.asarray(x, k.mu_product.dtype), g)
  denom = jnp.sqrt(v / c(k.bias_correction2)) + c(eps)
  return (c(k.grad_coef) * g + c(k.momentum_coef) * m) / denom


def _algorithm(
  name: str,
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  momentum_decay: jax.typing.ArrayLike,
  accumulator_dtype: jax.typing.DTypeLike | None,
) -> _core.Algorithm[ScaleByNadamState]:
  _validation.check_interval("b2", b2, 0.0, 1.0)
  _validation.check_interval("eps", eps, 0.0)
  schedule = momentum_schedules.dozat(b1, momentum_decay)  # validates b1, psi
  accumulator_dtype = _validation.check_accumulator_dtype(accumulator_dtype)

  def init_fn(params):
    return ScaleByNadamState(
      count=jnp.zeros([], jnp.int32),
      mu_product=jnp.ones([], _precision.scalar_dtype()),
      mu=_precision.zeros_like(params, accumulator_dtype),
      nu=_precision.zeros_like(params, accumulator_dtype, real=True),
    )

  def step(grads, state, learning_rate, value):
    del learning_rate, value
    k = _coefficients(schedule, b2, state)
    mu = jax.tree.map(functools.partial(_core.ema, b1), grads, state.mu)
    nu = jax.tree.map(
      lambda g, v: _core.ema(b2, _precision.abs_sq(g), v), grads, state.nu
    )
    direction = jax.tree.map(functools.partial(_direction, k, eps), grads, mu, nu)
    return direction, ScaleByNadamState(
      count=k.t,
      mu_product=k.mu_product,
      mu=optax.tree.cast_like(mu, state.mu),
      nu=optax.tree.cast_like(nu, state.nu),
    )

  return _core.Algorithm(
    name=name,
    state_type=ScaleByNadamState,
    init=init_fn,
    step=step,
    state_tree=lambda state: state.mu,
  )


def scale_by_nadam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  momentum_decay: jax.typing.ArrayLike = 0.004,
  *,
  accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam's direction, as ``torch.optim.NAdam`` computes it (no learning rate).

  With :math:`t = 1, 2, \dots` and Dozat's schedule :math:`\mu_t = b_1 (1 -
  \tfrac12 \cdot 0.96^{t \psi})`:

  .. math::

    m_t &= b_1 m_{t-1} + (1 - b_1) g_t, \qquad
    v_t = b_2 v_{t-1} + (1 - b_2) |g_t|^2 \\
    d_t &= \left(\frac{(1 - \mu_t)\, g_t}{1 - \prod_{i \le t} \mu_i}
      + \frac{\mu_{t+1}\, m_t}{1 - \prod_{i \le t+1} \mu_i}\right)
      \Big/ \left(\sqrt{v_t / (1 - b_2^t)} + \epsilon\right)

  With ``momentum_decay=float("inf")``, :math:`\mu_t = b_1` and this is
  ``optax.scale_by_adam(nesterov=True)`` (optax's ``nadam``).

  **Complex parameters** are handled as optax does: the second moment takes
  :math:`|g|^2` (and is stored real), the first moment keeps the complex
  gradient; pass the conjugate of ``jax.grad``'s gradient, as for any optax
  optimizer.

  Args:
    b1: :math:`b_1` in [0, 1).
    b2: :math:`b_2` in [0, 1).
    eps: :math:`\epsilon \ge 0`, added after the square root.
    momentum_decay: :math:`\psi \ge 0` (PyTorch's default 0.004).
    accumulator_dtype: float dtype of both moments; None uses the params'.
      Arithmetic runs in float32 or wider either way.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByNadamState`.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(nag_optax.scale_by_nadam(), optax.scale(-1e-3))
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, state = tx.update(params, tx.init(params))
    >>> print(updates)
    [-0.00105645  0.00105645]

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
  """
  return _core.transform(
    _algorithm("scale_by_nadam", b1, b2, eps, momentum_decay, accumulator_dtype)
  )


def nadam(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  momentum_decay: jax.typing.ArrayLike = 0.004,
  weight_decay: jax.typing.ArrayLike = 0.0,
  decoupled_weight_decay: bool = False,
  *,
  weight_decay_mask: optax.MaskOrFn = None,
  accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam exactly as ``torch.optim.NAdam`` (defaults lr 2e-3 there).

  The direction :math:`d_t` of :func:`scale_by_nadam`, then
  :math:`p \leftarrow p - \alpha_t d_t`. Weight decay :math:`\lambda` is
  coupled (:math:`g_t \leftarrow g_t + \lambda p` before the direction,
  PyTorch's default) or, with ``decoupled_weight_decay=True``, :math:`p
  \leftarrow p - \alpha_t \lambda p` (NAdamW).
  ``momentum_decay=float("inf")`` gives ``optax.nadam``.

  The state is the :class:`ScaleByNadamState` of the direction (its
  ``count`` drives a learning-rate schedule), the same with and without
  weight decay and under ``optax.inject_hyperparams``. Complex parameters
  are handled as in :func:`scale_by_nadam`; weight decay is linear in
  :math:`p` and applies to them as it is.

  Args:
    learning_rate: non-negative float or optax schedule.
    b1: :math:`b_1` in [0, 1).
    b2: :math:`b_2` in [0, 1).
    eps: added after the square root.
    momentum_decay: Dozat's :math:`\psi` (PyTorch 0.004, Keras 3 uses 1).
    weight_decay: :math:`\lambda \ge 0`.
    decoupled_weight_decay: False for L2 added to the gradient, True for
      NAdamW.
    weight_decay_mask: which leaves decay: a tree of booleans like the
      params, a prefix of it (``{"encoder": True, "decoder": False}`` over
      nested params), or a callable of the params returning either; None
      decays every leaf. With ``optax.inject_hyperparams`` pass a callable
      mask as a static argument.
    accumulator_dtype: float dtype of both moments; None uses the params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByNadamState`.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.nadam(2e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    >>> params = jnp.ones(3)
    >>> updates, state = tx.update(params, tx.init(params), params)
    >>> print(updates)
    [-0.0021329 -0.0021329 -0.0021329]

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, 2016.

    Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019.
  """
  _validation.check_learning_rate("nadam", learning_rate)
  decay = _weight_decay.WeightDecay(
    weight_decay,
    mode="decoupled" if decoupled_weight_decay else "coupled",
    mask=weight_decay_mask,
  )
  algorithm = _algorithm("nadam", b1, b2, eps, momentum_decay, accumulator_dtype)
  return _core.transform(algorithm, learning_rate, decay)
