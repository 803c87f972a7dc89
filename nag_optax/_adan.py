"""Adan exactly as the reference implementation (sail-sg/Adan, adan.py)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax import _core
from nag_optax import _precision
from nag_optax import _restart
from nag_optax import _validation
from nag_optax import _weight_decay


class ScaleByAdanState(NamedTuple):
  """State of :func:`scale_by_adan` and :func:`adan`: the reference's four
  buffers and the restart fields.

  Attributes:
    count: steps taken (int32); drives the bias correction of ``n`` and the
      learning-rate schedule.
    momentum_count: steps since the start or the last restart (int32); drives
      the bias corrections of ``m`` and ``v``.
    m: EMA of gradients.
    v: EMA of gradient differences.
    n: EMA of squared Nesterov gradients :math:`|g + b_2 \\Delta|^2` (real
      for complex parameters).
    prev_grad: the previous (clipped) gradient.
    restarts: adaptive restarts so far (int32).
    prev_value: the loss at the previous step, for ``restart="function"``.

  Example:
    >>> import jax.numpy as jnp
    >>> import nag_optax
    >>> state = nag_optax.scale_by_adan().init({"w": jnp.zeros(2)})
    >>> state._fields
    ('count', 'momentum_count', 'm', 'v', 'n', 'prev_grad', 'restarts',
     'prev_value')
    >>> state.m
    {'w': Array([0., 0.], dtype=float32)}
  """

  # mypy flags a field named count (it shadows tuple.count), but the name is
  # optax's convention: optax.tree.get(state, "count") reads it.
  count: jax.Array  # type: ignore[assignment]
  momentum_count: jax.Array
  m: optax.Updates
  v: optax.Updates
  n: optax.Updates
  prev_grad: optax.Updates
  restarts: jax.Array
  prev_value: jax.Array


class _Coefficients(NamedTuple):
  """Step t's scalars of the rule, float32 or wider."""

  b1: jax.Array
  b2: jax.Array
  b3: jax.Array
  eps: jax.Array
  c1: jax.Array  # 1 - b1^k, k the momentum count (restarts reset it)
  c2: jax.Array  # 1 - b2^k
  c3_sqrt: jax.Array  # sqrt(1 - b3^t), t the step


def _coefficients(
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  b3: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  state: ScaleByAdanState,
) -> _Coefficients:
  scalar = _precision.scalar_dtype()
  b1, b2, b3, eps = (jnp.asarray(x, scalar) for x in (b1, b2, b3, eps))
  t = jnp.asarray(optax.safe_increment(state.count), scalar)
  k = jnp.asarray(optax.safe_increment(state.momentum_count), scalar)
  return _Coefficients(
    b1=b1,
    b2=b2,
    b3=b3,
    eps=eps,
    c1=1.0 - b1**k,
    c2=1.0 - b2**k,
    c3_sqrt=jnp.sqrt(1.0 - b3**t),
  )


def _clip(
  grads: optax.Updates, max_grad_norm: jax.typing.ArrayLike, eps: jax.typing.ArrayLike
) -> optax.Updates:
  """The reference's global clipping, g * min(1, max / (||g|| + eps)).

  A literal 0 (no clipping) leaves it out of the graph: one pass over the
  gradient fewer.
  """
  if _validation.is_static_zero(max_grad_norm):
    return grads
  scalar = _precision.scalar_dtype()
  max_norm = jnp.asarray(max_grad_norm, scalar)
  norm = optax.tree.norm(grads).astype(scalar)
  clip = jnp.where(
    max_norm > 0,
    jnp.minimum(1.0, max_norm / (norm + jnp.asarray(eps, scalar))),
    1.0,
  )
  return jax.tree.map(lambda g: g * _precision.cast_scalar(clip, g), grads)


def _delta(first: jax.Array, g: jax.Array, prev: jax.Array) -> jax.Array:
  """g_t - g_{t-1}, 0 at the first step."""
  return jnp.where(first, jnp.zeros_like(g), g - prev.astype(g.dtype))


def _second_moment(
  b2: jax.Array, b3: jax.Array, g: jax.Array, delta: jax.Array, n: jax.Array
) -> jax.Array:
  """n <- b3 n + (1 - b3) |g + b2 delta|^2."""
  nesterov_grad = g + _precision.cast_scalar(b2, g) * delta
  return _core.ema(b3, _precision.abs_sq(nesterov_grad), n)


def _direction(k: _Coefficients, m: jax.Array, v: jax.Array, n: jax.Array) -> jax.Array:
  c = lambda x: _precision.cast_scalar(x, m)
  denom = jnp.sqrt(n) / c(k.c3_sqrt) + c(k.eps)
  return (m / c(k.c1) + c(k.b2) * v / c(k.c2)) / denom


def _algorithm(
  name: str,
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  b3: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  max_grad_norm: jax.typing.ArrayLike,
  restart: str | None,
  restart_every: int | None,
  accumulator_dtype: jax.typing.DTypeLike | None,
) -> _core.Algorithm[ScaleByAdanState]:
  for arg, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    _validation.check_interval(arg, value, 0.0, 1.0)
  _validation.check_interval("eps", eps, 0.0)
  _validation.check_interval("max_grad_norm", max_grad_norm, 0.0)
  restarter = _restart.Restart(restart, restart_every)
  accumulator_dtype = _validation.check_accumulator_dtype(accumulator_dtype)

  def init_fn(params):
    zeros = functools.partial(_precision.zeros_like, params, accumulator_dtype)
    return ScaleByAdanState(
      count=jnp.zeros([], jnp.int32),
      m=zeros(),
      v=zeros(),
      n=zeros(real=True),
      prev_grad=zeros(),
      **_restart.init_fields(),
    )

  def step(grads, state, learning_rate, value):
    del learning_rate
    restarter.check_value(value)
    grads = _clip(grads, max_grad_norm, eps)
    k = _coefficients(b1, b2, b3, eps, state)
    first = state.count == 0
    delta = jax.tree.map(functools.partial(_delta, first), grads, state.prev_grad)
    m = jax.tree.map(functools.partial(_core.ema, k.b1), grads, state.m)
    v = jax.tree.map(functools.partial(_core.ema, k.b2), delta, state.v)
    second_moment = functools.partial(_second_moment, k.b2, k.b3)
    n = jax.tree.map(second_moment, grads, delta, state.n)
    direction = jax.tree.map(functools.partial(_direction, k), m, v, n)
    restart_now = restarter.decide(
      state, grads=grads, step=jax.tree.map(jnp.negative, direction), value=value
    )
    m, v = restarter.reset(restart_now, (m, v))
    return direction, ScaleByAdanState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      m=optax.tree.cast_like(m, state.m),
      v=optax.tree.cast_like(v, state.v),
      n=optax.tree.cast_like(n, state.n),
      prev_grad=optax.tree.cast_like(grads, state.prev_grad),
      **restarter.advance(state, restart_now, value),
    )

  return _core.Algorithm(
    name=name,
    state_type=ScaleByAdanState,
    init=init_fn,
    step=step,
    state_tree=lambda state: state.m,
  )


def scale_by_adan(
  b1: jax.typing.ArrayLike = 0.98,
  b2: jax.typing.ArrayLike = 0.92,
  b3: jax.typing.ArrayLike = 0.99,
  eps: jax.typing.ArrayLike = 1e-8,
  max_grad_norm: jax.typing.ArrayLike = 0.0,
  *,
  restart: str | None = None,
  restart_every: int | None = None,
  accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adan's direction as the reference code computes it (no learning rate).

  With :math:`t = 1, 2, \dots`, :math:`c_i = 1 - b_i^t` and the gradient
  clipped to global norm ``max_grad_norm`` (:math:`g \leftarrow g \min(1,
  \text{max} / (\|g\| + \epsilon))` when ``max_grad_norm > 0``):

  .. math::

    \Delta_t &= g_t - g_{t-1} \quad (\Delta_1 = 0) \\
    m_t &= b_1 m_{t-1} + (1 - b_1) g_t, \qquad
    v_t = b_2 v_{t-1} + (1 - b_2) \Delta_t \\
    n_t &= b_3 n_{t-1} + (1 - b_3) |g_t + b_2 \Delta_t|^2 \\
    d_t &= \left(\frac{m_t}{c_1} + b_2 \frac{v_t}{c_2}\right) \Big/
      \left(\frac{\sqrt{n_t}}{\sqrt{c_3}} + \epsilon\right)

  optax 0.2.8's ``scale_by_adan`` uses :math:`1 - b_2` where the rule has
  :math:`b_2` in both Nesterov terms, and departs from the reference from
  the second step.

  **Restart.** ``restart="gradient"`` (the step :math:`-d_t` goes uphill for
  :math:`g_t`), ``"function"`` (``value`` went up) or ``restart_every`` zero
  the momentum buffers :math:`m, v` after the step and restart their bias
  corrections :math:`c_1, c_2`, so the fresh buffers are not under-corrected
  (the next direction is :math:`(g + b_2 \Delta) / (\sqrt{n / c_3} +
  \epsilon)`, as at step 1). The second moment :math:`n`, its correction
  :math:`c_3` and the previous gradient carry on. This is deliberately less
  than the reference's ``Adan.restart_opt()`` (a manual restart that also
  zeroes :math:`n` and the step): an adaptive restart may fire many times,
  and a fresh :math:`n` makes the next step :math:`\mathrm{sign}(g + b_2
  \Delta)`, a jump to a step of size :math:`\alpha` in every coordinate at
  each restart. What went uphill is the momentum; :math:`n` estimates the
  gradient's scale, which a restart does not change.

  **Complex parameters** are handled as optax handles them in Adam: the
  second moment takes :math:`|g + b_2 \Delta|^2` (and is stored real), the
  clipping norm is :math:`\sqrt{\sum |g|^2}`, and the gradient restart
  tests the real part of the conjugated inner product. Pass the conjugate of
  ``jax.grad``'s gradient, as for any optax optimizer. (The reference, in
  PyTorch, has no complex rule; optax 0.2.8's ``adan`` refuses complex
  parameters in its tests.)

  Args:
    b1: in [0, 1); 0.98 in the reference (the paper writes 1 - 0.02).
    b2: in [0, 1).
    b3: in [0, 1).
    eps: added after the square root, and to the norm when clipping.
    max_grad_norm: global clipping norm; 0 disables clipping.
    restart: None, "gradient" or "function".
    restart_every: restart every this many steps.
    accumulator_dtype: float dtype of the four buffers (:math:`m, v, n` and
      the previous gradient); None uses the params'. Arithmetic runs in
      float32 or wider either way.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByAdanState`.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(nag_optax.scale_by_adan(), optax.scale(-1e-3))
    >>> params = jnp.array([1.0, -2.0])
    >>> updates, state = tx.update(params, tx.init(params))
    >>> print(updates)
    [-0.001  0.001]

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, 2022 (TPAMI 2024), https://arxiv.org/abs/2208.06677
  """
  return _core.transform(
    _algorithm(
      "scale_by_adan",
      b1,
      b2,
      b3,
      eps,
      max_grad_norm,
      restart,
      restart_every,
      accumulator_dtype,
    )
  )


def adan(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.98,
  b2: jax.typing.ArrayLike = 0.92,
  b3: jax.typing.ArrayLike = 0.99,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  no_prox: bool = False,
  max_grad_norm: jax.typing.ArrayLike = 0.0,
  *,
  weight_decay_mask: optax.MaskOrFn = None,
  restart: str | None = None,
  restart_every: int | None = None,
  accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adan exactly as the reference ``sail-sg/Adan`` (``adan.py``).

  The direction :math:`d_t` of :func:`scale_by_adan`, then with learning
  rate :math:`\alpha_t` and weight decay :math:`\lambda`:

  .. math::

    p \leftarrow \frac{p - \alpha_t d_t}{1 + \alpha_t \lambda}
    \quad\text{(proximal, default)}, \qquad
    p \leftarrow (1 - \alpha_t \lambda) p - \alpha_t d_t
    \quad\text{(``no_prox=True``)}

  on the leaves ``weight_decay_mask`` selects (the others take
  :math:`p \leftarrow p - \alpha_t d_t`). optax 0.2.8's ``adan`` has only
  the second form and uses :math:`1 - b_2` in place of :math:`b_2` in both
  Nesterov terms.

  The state is the :class:`ScaleByAdanState` of the direction (its ``count``
  drives a learning-rate schedule), the same with and without weight decay
  and under ``optax.inject_hyperparams``. Complex parameters are handled as
  in :func:`scale_by_adan`; both decay forms are linear in :math:`p` and
  apply to them as they are.

  Args:
    learning_rate: non-negative float or optax schedule (reference 1e-3).
    b1: in [0, 1).
    b2: in [0, 1).
    b3: in [0, 1).
    eps: added after the square root.
    weight_decay: :math:`\lambda \ge 0`.
    no_prox: AdamW-style decay instead of the proximal step.
    max_grad_norm: global gradient clipping norm; 0 disables it.
    weight_decay_mask: which leaves decay: a tree of booleans like the
      params, a prefix of it (``{"encoder": True, "decoder": False}`` over
      nested params), or a callable of the params returning either; None
      decays every leaf. With ``optax.inject_hyperparams`` pass a callable
      mask as a static argument.
    restart: None, "gradient" or "function" (see :func:`scale_by_adan`).
    restart_every: restart every this many steps.
    accumulator_dtype: float dtype of the four buffers; None uses the
      params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByAdanState`.

  Example:
    >>> import jax, jax.numpy as jnp, nag_optax
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> tx = nag_optax.adan(
    ...   1e-3, weight_decay=0.02,
    ...   weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    >>> updates, state = tx.update(params, tx.init(params), params)
    >>> float(jnp.abs(updates["b"]).max())  # zero gradient, no decay: no move
    0.0

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, 2022 (TPAMI 2024), https://arxiv.org/abs/2208.06677
  """
  _validation.check_learning_rate("adan", learning_rate)
  decay = _weight_decay.WeightDecay(
    weight_decay, mode="decoupled" if no_prox else "proximal", mask=weight_decay_mask
  )
  algorithm = _algorithm(
    "adan",
    b1,
    b2,
    b3,
    eps,
    max_grad_norm,
    restart,
    restart_every,
    accumulator_dtype,
  )
  return _core.transform(algorithm, learning_rate, decay)
