"""Adan exactly as the reference implementation (sail-sg/Adan, adan.py)."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax import _precision
from nag_optax import _restart
from nag_optax import _validation


class ScaleByAdanState(NamedTuple):
  """State of :func:`scale_by_adan`: the reference's four buffers and scalars.

  Attributes:
    count: steps taken (int32); drives the bias correction of ``n``.
    momentum_count: steps since the start or the last restart (int32); drives
      the bias corrections of ``m`` and ``v``.
    m: EMA of gradients.
    v: EMA of gradient differences.
    n: EMA of squared Nesterov gradients :math:`(g + b_2 \\Delta)^2`.
    prev_grad: the previous (clipped) gradient.
    restarts: adaptive restarts so far (int32).
    prev_value: the loss at the previous step, for ``restart="function"``.
  """

  count: jax.Array
  momentum_count: jax.Array
  m: optax.Updates
  v: optax.Updates
  n: optax.Updates
  prev_grad: optax.Updates
  restarts: jax.Array
  prev_value: jax.Array


def scale_by_adan(
  b1: jax.typing.ArrayLike = 0.98,
  b2: jax.typing.ArrayLike = 0.92,
  b3: jax.typing.ArrayLike = 0.99,
  eps: jax.typing.ArrayLike = 1e-8,
  max_grad_norm: jax.typing.ArrayLike = 0.0,
  *,
  restart: str | None = None,
  restart_every: int | None = None,
  accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adan's direction as the reference code computes it (no learning rate).

  With :math:`t = 1, 2, \dots`, :math:`c_i = 1 - b_i^t` and the gradient
  clipped to global norm ``max_grad_norm`` (:math:`g \leftarrow g \min(1,
  \text{max} / (\|g\| + \epsilon))` when ``max_grad_norm > 0``):

  .. math::

    \Delta_t &= g_t - g_{t-1} \quad (\Delta_1 = 0) \\
    m_t &= b_1 m_{t-1} + (1 - b_1) g_t, \qquad
    v_t = b_2 v_{t-1} + (1 - b_2) \Delta_t \\
    n_t &= b_3 n_{t-1} + (1 - b_3) (g_t + b_2 \Delta_t)^2 \\
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

  Args:
    b1: in [0, 1); 0.98 in the reference (the paper writes 1 - 0.02).
    b2: in [0, 1).
    b3: in [0, 1).
    eps: added after the square root, and to the norm when clipping.
    max_grad_norm: global clipping norm; 0 disables clipping.
    restart: None, "gradient" or "function".
    restart_every: restart every this many steps.
    accumulator_dtype: dtype of the four buffers (:math:`m, v, n` and the
      previous gradient); None uses the params'. Arithmetic runs in float32
      or wider either way.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, 2022 (TPAMI 2024), https://arxiv.org/abs/2208.06677
  """
  for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
    _validation.check_interval(name, value, 0.0, 1.0)
  _validation.check_interval("eps", eps, 0.0)
  _validation.check_interval("max_grad_norm", max_grad_norm, 0.0)
  _restart.validate(restart, restart_every)
  accumulator_dtype = (
    None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
  )

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params, dtype=accumulator_dtype)
    scalar = _precision.scalar_dtype()
    return ScaleByAdanState(
      count=jnp.zeros([], jnp.int32),
      momentum_count=jnp.zeros([], jnp.int32),
      m=zeros(),
      v=zeros(),
      n=zeros(),
      prev_grad=zeros(),
      restarts=jnp.zeros([], jnp.int32),
      prev_value=jnp.full([], jnp.inf, scalar),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    _validation.check_trees_match("gradient", updates, "optimizer state", state.m)
    _restart.check_value(restart, value)
    scalar = _precision.scalar_dtype()
    b1_, b2_, b3_, eps_ = (jnp.asarray(x, scalar) for x in (b1, b2, b3, eps))
    max_norm = jnp.asarray(max_grad_norm, scalar)
    cd = lambda g: _precision.compute_dtype(g.dtype)
    grads = jax.tree.map(lambda g: g.astype(cd(g)), updates)
    norm = optax.tree.norm(grads).astype(scalar)
    clip = jnp.where(max_norm > 0, jnp.minimum(1.0, max_norm / (norm + eps_)), 1.0)
    grads = jax.tree.map(lambda g: g * clip.astype(g.dtype), grads)

    t = optax.safe_increment(state.count).astype(scalar)
    tm = optax.safe_increment(state.momentum_count).astype(scalar)
    c1, c2 = 1.0 - b1_**tm, 1.0 - b2_**tm
    c3_sqrt = jnp.sqrt(1.0 - b3_**t)
    first = state.count == 0

    def moments(g, m, v, n, prev):
      c = lambda x: x.astype(g.dtype)
      delta = jnp.where(first, jnp.zeros_like(g), g - prev.astype(g.dtype))
      m = c(b1_) * m.astype(g.dtype) + (1.0 - c(b1_)) * g
      v = c(b2_) * v.astype(g.dtype) + (1.0 - c(b2_)) * delta
      nesterov_grad = g + c(b2_) * delta
      n = c(b3_) * n.astype(g.dtype) + (1.0 - c(b3_)) * nesterov_grad**2
      denom = jnp.sqrt(n) / c(c3_sqrt) + c(eps_)
      return (m / c(c1) + c(b2_) * v / c(c2)) / denom, m, v, n

    treedef = jax.tree.structure(updates)
    out = treedef.flatten_up_to(
      jax.tree.map(moments, grads, state.m, state.v, state.n, state.prev_grad)
    )
    direction, m, v, n = (
      jax.tree.unflatten(treedef, [leaf[i] for leaf in out]) for i in range(4)
    )
    restart_now = _restart.should_restart(
      restart,
      restart_every,
      grads=grads,
      step=jax.tree.map(jnp.negative, direction),
      value=value,
      prev_value=state.prev_value,
      momentum_count=state.momentum_count,
    )
    keep = 1.0 - restart_now.astype(scalar)
    m, v = (jax.tree.map(lambda x: x * keep.astype(x.dtype), tree) for tree in (m, v))
    new_state = ScaleByAdanState(
      count=optax.safe_increment(state.count),
      momentum_count=jnp.where(
        restart_now, 0, optax.safe_increment(state.momentum_count)
      ).astype(jnp.int32),
      m=optax.tree.cast_like(m, state.m),
      v=optax.tree.cast_like(v, state.v),
      n=optax.tree.cast_like(n, state.n),
      prev_grad=optax.tree.cast_like(grads, state.prev_grad),
      restarts=state.restarts + restart_now.astype(jnp.int32),
      prev_value=(
        jnp.asarray(value, scalar) if restart == "function" else state.prev_value
      ),
    )
    return optax.tree.cast_like(direction, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class AdanWeightDecayState(NamedTuple):
  """Step count of :func:`adan`'s learning-rate and weight-decay step."""

  count: jax.Array


def _scale_and_decay(learning_rate, weight_decay, no_prox):
  """-lr * d with the reference's proximal (or AdamW-style) weight decay."""
  lr_fn = _validation.as_schedule(learning_rate)
  use_decay = not _validation.is_static_zero(weight_decay)

  def init_fn(params):
    del params
    return AdanWeightDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if use_decay and params is None:
      raise ValueError(
        "weight_decay needs the parameters: call update(grads, state, params)."
      )
    scalar = _precision.scalar_dtype()
    lr = jnp.asarray(lr_fn(state.count), scalar)
    wd = jnp.asarray(weight_decay, scalar)

    def step(d, p):
      cd = _precision.compute_dtype(d.dtype)
      u = -lr.astype(cd) * d.astype(cd)
      if use_decay:
        decay = (lr * wd).astype(cd)
        p = p.astype(cd)
        # prox: p_new = (p - lr d) / (1 + lr wd); no_prox: (1 - lr wd) p - lr d.
        u = u - decay * p if no_prox else (u - decay * p) / (1.0 + decay)
      return u.astype(d.dtype)

    return (
      jax.tree.map(step, updates, updates if params is None else params),
      AdanWeightDecayState(count=optax.safe_increment(state.count)),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
  restart: str | None = None,
  restart_every: int | None = None,
  accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adan exactly as the reference ``sail-sg/Adan`` (``adan.py``).

  The direction :math:`d_t` of :func:`scale_by_adan`, then with learning
  rate :math:`\alpha_t` and weight decay :math:`\lambda`:

  .. math::

    p \leftarrow \frac{p - \alpha_t d_t}{1 + \alpha_t \lambda}
    \quad\text{(proximal, default)}, \qquad
    p \leftarrow (1 - \alpha_t \lambda) p - \alpha_t d_t
    \quad\text{(``no_prox=True``)}

  optax 0.2.8's ``adan`` has only the second form and uses :math:`1 - b_2`
  in place of :math:`b_2` in both Nesterov terms.

  Args:
    learning_rate: non-negative float or optax schedule (reference 1e-3).
    b1: in [0, 1).
    b2: in [0, 1).
    b3: in [0, 1).
    eps: added after the square root.
    weight_decay: :math:`\lambda \ge 0`.
    no_prox: AdamW-style decay instead of the proximal step.
    max_grad_norm: global gradient clipping norm; 0 disables it.
    restart: None, "gradient" or "function" (see :func:`scale_by_adan`).
    restart_every: restart every this many steps.
    accumulator_dtype: dtype of the four buffers; None uses the params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.adan(1e-3, weight_decay=0.02)
    >>> params = jnp.ones(3)
    >>> updates, state = tx.update(params, tx.init(params), params)

  References:
    Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models, 2022 (TPAMI 2024), https://arxiv.org/abs/2208.06677
  """
  _validation.check_interval("learning_rate", learning_rate, 0.0)
  _validation.check_interval("weight_decay", weight_decay, 0.0)
  return optax.chain(
    scale_by_adan(
      b1,
      b2,
      b3,
      eps,
      max_grad_norm,
      restart=restart,
      restart_every=restart_every,
      accumulator_dtype=accumulator_dtype,
    ),
    _scale_and_decay(learning_rate, weight_decay, no_prox),
  )
