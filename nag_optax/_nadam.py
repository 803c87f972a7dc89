"""NAdam exactly as ``torch.optim.NAdam``: Dozat's momentum schedule included."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax import _precision
from nag_optax import _validation
from nag_optax import _weight_decay
from nag_optax import momentum_schedules


class ScaleByNadamState(NamedTuple):
  """State of :func:`scale_by_nadam`.

  Attributes:
    count: steps taken (int32).
    mu_product: :math:`\\prod_{i \\le t} \\mu_i` (float32 or wider).
    mu: first moment :math:`m_t`.
    nu: second moment :math:`v_t`.
  """

  count: jax.Array
  mu_product: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_nadam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  momentum_decay: jax.typing.ArrayLike = 0.004,
  *,
  accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam's direction, as ``torch.optim.NAdam`` computes it (no learning rate).

  With :math:`t = 1, 2, \dots` and Dozat's schedule :math:`\mu_t = b_1 (1 -
  \tfrac12 \cdot 0.96^{t \psi})`:

  .. math::

    m_t &= b_1 m_{t-1} + (1 - b_1) g_t, \qquad
    v_t = b_2 v_{t-1} + (1 - b_2) g_t^2 \\
    d_t &= \left(\frac{(1 - \mu_t)\, g_t}{1 - \prod_{i \le t} \mu_i}
      + \frac{\mu_{t+1}\, m_t}{1 - \prod_{i \le t+1} \mu_i}\right)
      \Big/ \left(\sqrt{v_t / (1 - b_2^t)} + \epsilon\right)

  With ``momentum_decay=float("inf")``, :math:`\mu_t = b_1` and this is
  ``optax.scale_by_adam(nesterov=True)`` (optax's ``nadam``).

  Args:
    b1: :math:`b_1` in [0, 1).
    b2: :math:`b_2` in [0, 1).
    eps: :math:`\epsilon \ge 0`, added after the square root.
    momentum_decay: :math:`\psi \ge 0` (PyTorch's default 0.004).
    accumulator_dtype: dtype of both moments; None uses the params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, 2016,
    https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
  """
  _validation.check_interval("b2", b2, 0.0, 1.0)
  _validation.check_interval("eps", eps, 0.0)
  schedule = momentum_schedules.dozat(b1, momentum_decay)  # validates b1, psi
  accumulator_dtype = (
    None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
  )

  def init_fn(params):
    return ScaleByNadamState(
      count=jnp.zeros([], jnp.int32),
      mu_product=jnp.ones([], _precision.scalar_dtype()),
      mu=optax.tree.zeros_like(params, dtype=accumulator_dtype),
      nu=optax.tree.zeros_like(params, dtype=accumulator_dtype),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _validation.check_trees_match("gradient", updates, "optimizer state", state.mu)
    scalar = _precision.scalar_dtype()
    t = optax.safe_increment(state.count)
    mu_t = schedule(state.count)  # Dozat's mu_t; schedule(k) = mu_{k+1}
    mu_next = schedule(t)
    mu_product = state.mu_product * mu_t
    mu_product_next = mu_product * mu_next
    b1_, b2_ = jnp.asarray(b1, scalar), jnp.asarray(b2, scalar)
    bias_correction2 = 1.0 - b2_ ** t.astype(scalar)
    grad_coef = (1.0 - mu_t) / (1.0 - mu_product)
    momentum_coef = mu_next / (1.0 - mu_product_next)

    def moments(g, m, v):
      cd = _precision.compute_dtype(g.dtype)
      c = lambda x: jnp.asarray(x, scalar).astype(cd)
      g32 = g.astype(cd)
      m = c(b1_) * m.astype(cd) + (1.0 - c(b1_)) * g32
      v = c(b2_) * v.astype(cd) + (1.0 - c(b2_)) * g32 * g32
      denom = jnp.sqrt(v / c(bias_correction2)) + c(eps)
      d = (c(grad_coef) * g32 + c(momentum_coef) * m) / denom
      return d.astype(g.dtype), m, v

    out = jax.tree.map(moments, updates, state.mu, state.nu)
    treedef = jax.tree.structure(updates)
    leaves = treedef.flatten_up_to(out)
    direction, mu, nu = (
      jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(3)
    )
    new_state = ScaleByNadamState(
      count=t,
      mu_product=mu_product.astype(scalar),
      mu=optax.tree.cast_like(mu, state.mu),
      nu=optax.tree.cast_like(nu, state.nu),
    )
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def nadam(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  momentum_decay: jax.typing.ArrayLike = 0.004,
  weight_decay: jax.typing.ArrayLike = 0.0,
  decoupled_weight_decay: bool = False,
  *,
  weight_decay_mask: Any = None,
  accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NAdam exactly as ``torch.optim.NAdam`` (defaults lr 2e-3 there).

  The direction :math:`d_t` of :func:`scale_by_nadam`, then
  :math:`p \leftarrow p - \alpha_t d_t`. Weight decay :math:`\lambda` is
  coupled (:math:`g_t \leftarrow g_t + \lambda p`, PyTorch's default) or, with
  ``decoupled_weight_decay=True``, :math:`p \leftarrow p - \alpha_t \lambda
  p` (NAdamW). ``momentum_decay=float("inf")`` gives ``optax.nadam``.

  Args:
    learning_rate: non-negative float or optax schedule.
    b1: :math:`b_1` in [0, 1).
    b2: :math:`b_2` in [0, 1).
    eps: added after the square root.
    momentum_decay: Dozat's :math:`\psi` (PyTorch 0.004, Keras 3 uses 1).
    weight_decay: :math:`\lambda \ge 0`.
    decoupled_weight_decay: False for L2 added to the gradient, True for
      NAdamW.
    weight_decay_mask: tree of booleans (or callable) selecting decayed leaves.
    accumulator_dtype: dtype of both moments; None uses the params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.nadam(2e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    >>> params = jnp.ones(3)
    >>> updates, state = tx.update(params, tx.init(params), params)

  References:
    Dozat, Incorporating Nesterov Momentum into Adam, 2016.

    Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019.
  """
  _validation.check_interval("learning_rate", learning_rate, 0.0)
  direction = scale_by_nadam(
    b1, b2, eps, momentum_decay, accumulator_dtype=accumulator_dtype
  )
  return _weight_decay.with_weight_decay(
    direction,
    learning_rate,
    weight_decay=weight_decay,
    decoupled=decoupled_weight_decay,
    mask=weight_decay_mask,
  )
