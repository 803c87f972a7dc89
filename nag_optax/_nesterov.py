"""Nesterov accelerated gradient as an optax transformation.

One update rule, :func:`nesterov_transform`, serves both the direction-only
:func:`scale_by_nesterov` and the full optimizer :func:`nag_optax.nesterov`.
"""

import warnings
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _precision
from nag_optax import _restart
from nag_optax import _validation

FORMS = ("pytorch", "sutskever")


class ScaleByNesterovState(NamedTuple):
  """State of :func:`scale_by_nesterov`.

  Attributes:
    count: updates applied so far (int32); drives learning-rate schedules.
    momentum_count: updates since the start or the last restart (int32);
      drives the momentum schedule.
    trace: the momentum buffer. In the "pytorch" form (and for
      ``scale_by_nesterov``) the buffer ``m`` of gradients; in the
      "sutskever" form the velocity ``v`` in parameter units.
    lookahead: scalar ``c`` with ``stored_params - theta = c * trace`` (times
      the learning rate for ``scale_by_nesterov``, which does not know it);
      read by :func:`nag_optax.nesterov_eval_params`.
    restarts: number of adaptive restarts so far (int32), for logging.
    prev_value: the loss passed at the previous update (+inf before the
      first), for ``restart="function"``.
    rng_key: raw uint32 PRNG key for stochastic rounding.
  """

  count: jax.Array
  momentum_count: jax.Array
  trace: optax.Updates
  lookahead: jax.Array
  restarts: jax.Array
  prev_value: jax.Array
  rng_key: jax.Array


class NesterovState(ScaleByNesterovState):
  """State of :func:`nag_optax.nesterov`: as :class:`ScaleByNesterovState`.

  The learning rate is part of the update, so ``lookahead`` is in parameter
  units: ``stored_params - theta = lookahead * trace`` exactly.
  """

  __slots__ = ()


def _validate(momentum, dampening, form, accumulator_dtype, restart, restart_every):
  _validation.check_interval("momentum", momentum, 0.0, 1.0)
  _validation.check_interval("dampening", dampening, 0.0, 1.0)
  _validation.check_choice("form", form, FORMS)
  _restart.validate(restart, restart_every)
  if accumulator_dtype is not None:
    dtype = jnp.dtype(accumulator_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"accumulator_dtype must be a float dtype, got {dtype}.")


def _warn_if_momentum_rounds_to_one(momentum, trace, stochastic_rounding):
  """Warns when a low-precision buffer cannot hold this momentum's steady state."""
  value = _validation.concrete_value(momentum)
  if value is None or stochastic_rounding:
    return
  for dtype in {leaf.dtype for leaf in jax.tree.leaves(trace)}:
    if _precision.is_narrower_than_float32(dtype) and np.asarray(value, dtype) == 1:
      warnings.warn(
        f"momentum={float(value)} rounds to 1.0 in {jnp.dtype(dtype).name}: "
        "nag_optax keeps it in float32, but a momentum buffer stored in "
        f"{jnp.dtype(dtype).name} with round-to-nearest stalls far below "
        "its steady state 1/(1-momentum). Pass stochastic_rounding=True or "
        "a float32 accumulator_dtype.",
        stacklevel=3,
      )


def nesterov_transform(
  *,
  momentum: Any,
  learning_rate: Any = None,
  dampening: Any = 0.0,
  weight_decay: Any = 0.0,
  decoupled_weight_decay: bool = False,
  weight_decay_mask: Any = None,
  form: str = "pytorch",
  accumulator_dtype: Any = None,
  restart: str | None = None,
  restart_every: int | None = None,
  stochastic_rounding: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """The Nesterov update shared by :func:`scale_by_nesterov` and ``nesterov``.

  With ``learning_rate=None`` it returns the direction only ("pytorch" form,
  no weight decay) and keeps a :class:`ScaleByNesterovState`; otherwise it
  returns the full signed update and keeps a :class:`NesterovState`. See
  :func:`nag_optax.nesterov` for the rule and the arguments.
  """
  _validate(momentum, dampening, form, accumulator_dtype, restart, restart_every)
  direction_only = learning_rate is None
  if direction_only and (
    form != "pytorch" or not _validation.is_static_zero(weight_decay)
  ):
    raise ValueError(
      "scale_by_nesterov is the PyTorch-form direction only: use "
      "nag_optax.nesterov for form='sutskever' or weight decay."
    )
  state_cls = ScaleByNesterovState if direction_only else NesterovState
  if not direction_only:
    _validation.check_interval("learning_rate", learning_rate, 0.0)
  _validation.check_interval("weight_decay", weight_decay, 0.0)
  use_weight_decay = not _validation.is_static_zero(weight_decay)
  accumulator_dtype = (
    None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
  )
  momentum_fn = _validation.as_schedule(momentum)
  learning_rate_fn = _validation.as_schedule(1.0 if direction_only else learning_rate)

  def init_fn(params):
    trace = optax.tree.zeros_like(params, dtype=accumulator_dtype)
    _warn_if_momentum_rounds_to_one(momentum, trace, stochastic_rounding)
    scalar = _precision.scalar_dtype()
    return state_cls(
      count=jnp.zeros([], jnp.int32),
      momentum_count=jnp.zeros([], jnp.int32),
      trace=trace,
      lookahead=jnp.zeros([], scalar),
      restarts=jnp.zeros([], jnp.int32),
      prev_value=jnp.full([], jnp.inf, scalar),
      rng_key=jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    _validation.check_trees_match("gradient", updates, "optimizer state", state.trace)
    _restart.check_value(restart, value)
    if use_weight_decay:
      if params is None:
        raise ValueError(
          "weight_decay needs the parameters: call update(grads, state, params)."
        )
      _validation.check_trees_match("params", params, "gradient", updates)
    scalar = _precision.scalar_dtype()
    mu = jnp.asarray(momentum_fn(state.momentum_count), scalar)
    mu_next = jnp.asarray(momentum_fn(state.momentum_count + 1), scalar)
    lr = jnp.asarray(learning_rate_fn(state.count), scalar)
    # PyTorch starts the buffer at the first gradient: no dampening then.
    damp = jnp.where(
      state.momentum_count == 0, 1.0, 1.0 - jnp.asarray(dampening, scalar)
    )
    wd = jnp.asarray(weight_decay, scalar)
    decay_mask = _decay_mask(weight_decay_mask, params, updates, use_weight_decay)

    def effective_gradient(g, p, decays):
      g = g.astype(_precision.compute_dtype(g.dtype))
      if decays and not decoupled_weight_decay:
        g = g + wd.astype(g.dtype) * p.astype(g.dtype)  # Coupled L2.
      return g

    grads = jax.tree.map(
      effective_gradient, updates, _params_or(params, updates), decay_mask
    )

    def new_trace(g, t):
      c = lambda x: x.astype(g.dtype)
      if form == "sutskever":
        return c(mu) * t.astype(g.dtype) - c(lr) * c(damp) * g
      return c(mu) * t.astype(g.dtype) + c(damp) * g

    traces = jax.tree.map(new_trace, grads, state.trace)
    # The change of the non-extrapolated iterate theta is -lr * m or v.
    step = traces if form == "sutskever" else jax.tree.map(jnp.negative, traces)
    restart_now = _restart.should_restart(
      restart,
      restart_every,
      grads=grads,
      step=step,
      value=value,
      prev_value=state.prev_value,
      momentum_count=state.momentum_count,
    )
    keep = 1.0 - restart_now.astype(scalar)
    traces = jax.tree.map(lambda t: t * keep.astype(t.dtype), traces)

    # Round into the buffer's dtype first and look ahead with the buffer as
    # stored: the update then matches the state exactly (nesterov_eval_params
    # stays exact with a bfloat16 buffer), and XLA need not keep a copy of
    # the old buffer alive to recompute the unrounded value.
    rng_key = state.rng_key
    if stochastic_rounding:
      rng_key, subkey = jax.random.split(rng_key)
      stored = _store_stochastically(traces, state.trace, subkey)
    else:
      stored = jax.tree.map(lambda t, old: t.astype(old.dtype), traces, state.trace)

    def direction(g, t, p, raw, decays):
      c = lambda x: x.astype(g.dtype)
      t = t.astype(g.dtype)
      if form == "sutskever":
        u = c(mu_next) * t - c(lr) * g
      elif direction_only:
        u = g + c(mu_next) * t
      else:
        u = -c(lr) * (g + c(mu_next) * t)
      if decays and decoupled_weight_decay:
        u = u - c(lr) * c(wd) * p.astype(g.dtype)
      return u.astype(raw.dtype)

    new_updates = jax.tree.map(
      direction, grads, stored, _params_or(params, updates), updates, decay_mask
    )
    if form == "sutskever":
      lookahead = mu_next
    elif direction_only:
      lookahead = -mu_next
    else:
      lookahead = -lr * mu_next

    if restart == "function":
      prev_value = jnp.asarray(value, scalar)
    else:
      prev_value = state.prev_value
    new_state = state_cls(
      count=optax.safe_increment(state.count),
      momentum_count=jnp.where(
        restart_now, 0, optax.safe_increment(state.momentum_count)
      ).astype(jnp.int32),
      trace=stored,
      lookahead=lookahead.astype(scalar),
      restarts=state.restarts + restart_now.astype(jnp.int32),
      prev_value=prev_value,
      rng_key=rng_key,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _params_or(params, updates):
  """Params when given, else the updates (read only where decay is off)."""
  return updates if params is None else params


def _decay_mask(mask, params, updates, use_weight_decay):
  """A tree of Python bools: which leaves weight decay applies to."""
  if not use_weight_decay:
    return jax.tree.map(lambda _: False, updates)
  if mask is None:
    return jax.tree.map(lambda _: True, updates)
  if callable(mask):
    mask = mask(params)
  try:
    return jax.tree.map(lambda m, u: bool(m), mask, updates)
  except ValueError as error:
    raise ValueError(
      "weight_decay_mask must be a tree of booleans with the structure of "
      f"params (or a prefix of it): {error}"
    ) from error


def _store_stochastically(traces, old_traces, key):
  leaves, treedef = jax.tree.flatten(traces)
  keys = jax.random.split(key, max(len(leaves), 1))
  old_leaves = jax.tree.leaves(old_traces)
  stored = [
    _precision.stochastic_round(t, old.dtype, k)
    for t, old, k in zip(leaves, old_leaves, keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, stored)


def scale_by_nesterov(
  momentum: Any = 0.9,
  *,
  dampening: Any = 0.0,
  accumulator_dtype: Any = None,
  restart: str | None = None,
  restart_every: int | None = None,
  stochastic_rounding: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Nesterov look-ahead momentum direction, without a learning rate.

  With :math:`g_t` the incoming update, :math:`\mu_k` the momentum schedule
  evaluated at the momentum count :math:`k` (updates since the start or the
  last restart) and :math:`\tau` the dampening:

  .. math::

    m_{k+1} &= \mu_k m_k + (1 - \tau [k > 0])\, g_t, \qquad m_0 = 0 \\
    d_t &= g_t + \mu_{k+1} m_{k+1}

  and the transform emits :math:`d_t`; chain it with
  ``optax.scale_by_learning_rate`` (as :func:`nag_optax.nesterov` does
  internally) to obtain PyTorch's ``SGD(nesterov=True)``. With a constant
  momentum and ``dampening=0`` this equals ``optax.trace(momentum,
  nesterov=True)``. Using :math:`\mu_k` in the buffer and :math:`\mu_{k+1}` in
  the look-ahead makes a momentum schedule exact time-varying NAG (see
  :func:`nag_optax.nesterov`).

  Args:
    momentum: momentum in [0, 1), or a schedule of the momentum count.
    dampening: PyTorch's dampening in [0, 1); the first gradient after the
      start or a restart enters undamped.
    accumulator_dtype: dtype of the momentum buffer; None uses the params'.
    restart: None, "gradient" or "function" adaptive restart (see
      :func:`nag_optax.nesterov`).
    restart_every: also restart every this many momentum steps.
    stochastic_rounding: round a buffer narrower than float32 stochastically.
    seed: seed of the stochastic rounding.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`ScaleByNesterovState`.

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = optax.chain(nag_optax.scale_by_nesterov(0.9),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state, params)
    >>> print(optax.apply_updates(params, updates))
    [ 0.62 -1.24]

  References:
    Sutskever et al., On the importance of initialization and momentum in deep
    learning, 2013, https://proceedings.mlr.press/v28/sutskever13.html

    Bengio et al., Advances in Optimizing Recurrent Networks, 2012,
    https://arxiv.org/abs/1212.0901
  """
  return nesterov_transform(
    momentum=momentum,
    dampening=dampening,
    accumulator_dtype=accumulator_dtype,
    restart=restart,
    restart_every=restart_every,
    stochastic_rounding=stochastic_rounding,
    seed=seed,
  )
