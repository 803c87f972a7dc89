"""Nesterov accelerated gradient as an optax transformation.

One rule, :func:`nesterov_transform`, serves both the direction-only
:func:`scale_by_nesterov` and the full optimizer :func:`nag_optax.nesterov`.
Its form is chosen once, at construction: a :class:`_Form` holds the four
places where the forms differ.
"""

import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _core
from nag_optax import _precision
from nag_optax import _restart
from nag_optax import _validation
from nag_optax import _weight_decay

FORMS = ("pytorch", "sutskever")


class ScaleByNesterovState(NamedTuple):
  """State of :func:`scale_by_nesterov` and :func:`nag_optax.nesterov`.

  ``nag_optax.NesterovState`` is another name for this class.

  Attributes:
    count: updates applied so far (int32); drives learning-rate schedules.
    momentum_count: updates since the start or the last restart (int32);
      drives the momentum schedule.
    trace: the momentum buffer. In the "pytorch" form (and for
      ``scale_by_nesterov``) the buffer ``m`` of gradients; in the
      "sutskever" form the velocity ``v`` in parameter units.
    lookahead: scalar ``c`` with ``stored_params - theta = c * trace``, times
      the learning rate applied after the transform when
      ``lookahead_includes_lr`` is False; read by
      :func:`nag_optax.nesterov_eval_params`.
    lookahead_includes_lr: the units of ``lookahead`` (bool): True for
      ``nesterov``, whose update includes the learning rate; False for
      ``scale_by_nesterov``, which does not know the learning rate applied
      after it.
    restarts: number of adaptive restarts so far (int32), for logging.
    prev_value: the loss passed at the previous update (+inf before the
      first), for ``restart="function"``.
    rng_key: raw uint32 PRNG key for stochastic rounding.

  Example:
    >>> import jax.numpy as jnp
    >>> import nag_optax
    >>> state = nag_optax.nesterov(0.1, momentum=0.9).init({"w": jnp.zeros(3)})
    >>> isinstance(state, nag_optax.NesterovState)
    True
    >>> state.count, state.momentum_count
    (Array(0, dtype=int32), Array(0, dtype=int32))
    >>> state.trace
    {'w': Array([0., 0., 0.], dtype=float32)}
  """

  # mypy flags a field named count (it shadows tuple.count), but the name is
  # optax's convention: optax.tree.get(state, "count") reads it.
  count: jax.Array  # type: ignore[assignment]
  momentum_count: jax.Array
  trace: optax.Updates
  lookahead: jax.Array
  lookahead_includes_lr: jax.Array
  restarts: jax.Array
  prev_value: jax.Array
  rng_key: jax.Array


NesterovState = ScaleByNesterovState


class _Scalars(NamedTuple):
  """One step's hyperparameters, float32 or wider."""

  mu: jax.Array  # momentum at the momentum count: enters the buffer
  mu_next: jax.Array  # at the next count: the look-ahead
  lr: jax.Array  # learning rate (1 for the bare direction)
  damp: jax.Array  # 1 - dampening; 1 on the first step after (re)start


def _scalars(
  momentum_fn: optax.Schedule,
  dampening: jax.typing.ArrayLike,
  state: ScaleByNesterovState,
  learning_rate: jax.Array | None,
) -> _Scalars:
  scalar = _precision.scalar_dtype()
  return _Scalars(
    mu=jnp.asarray(momentum_fn(state.momentum_count), scalar),
    mu_next=jnp.asarray(momentum_fn(state.momentum_count + 1), scalar),
    lr=jnp.asarray(1.0 if learning_rate is None else learning_rate, scalar),
    # PyTorch starts the buffer at the first gradient: no dampening then.
    damp=jnp.where(
      state.momentum_count == 0, 1.0, 1.0 - jnp.asarray(dampening, scalar)
    ),
  )


class _Form(NamedTuple):
  """Where the two forms differ. ``g`` is the upcast gradient, ``h`` the
  :class:`_Scalars`, ``t`` the buffer (old in ``trace``, stored in
  ``output``)."""

  trace: Callable[[_Scalars, jax.Array, jax.Array], jax.Array]
  theta_step: Callable[[optax.Updates], optax.Updates]  # new buffers -> theta's change
  output: Callable[[_Scalars, jax.Array, jax.Array], jax.Array]
  lookahead: Callable[[_Scalars], jax.Array]
  applies_learning_rate: bool


_c = _precision.cast_scalar

# m <- mu m + damp g; direction g + mu_next m (the core scales it by -lr);
# theta moves by -lr m, and stored - theta = -lr mu_next m.
_PYTORCH = _Form(
  trace=lambda h, g, t: _c(h.mu, g) * t.astype(g.dtype) + _c(h.damp, g) * g,
  theta_step=lambda m: jax.tree.map(jnp.negative, m),
  output=lambda h, g, t: g + _c(h.mu_next, g) * t.astype(g.dtype),
  lookahead=lambda h: -h.lr * h.mu_next,
  applies_learning_rate=False,
)

# v <- mu v - lr damp g; update mu_next v - lr g; theta moves by v, and
# stored - theta = mu_next v.
_SUTSKEVER = _Form(
  trace=lambda h, g, t: (
    _c(h.mu, g) * t.astype(g.dtype) - _c(h.lr, g) * _c(h.damp, g) * g
  ),
  theta_step=lambda v: v,
  output=lambda h, g, t: _c(h.mu_next, g) * t.astype(g.dtype) - _c(h.lr, g) * g,
  lookahead=lambda h: h.mu_next,
  applies_learning_rate=True,
)


def _warn_if_momentum_rounds_to_one(
  momentum: optax.ScalarOrSchedule, trace: optax.Updates, stochastic_rounding: bool
) -> None:
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
  momentum: optax.ScalarOrSchedule,
  learning_rate: optax.ScalarOrSchedule | None = None,
  dampening: jax.typing.ArrayLike = 0.0,
  weight_decay: jax.typing.ArrayLike = 0.0,
  decoupled_weight_decay: bool = False,
  weight_decay_mask: optax.MaskOrFn = None,
  form: str = "pytorch",
  accumulator_dtype: jax.typing.DTypeLike | None = None,
  restart: str | None = None,
  restart_every: int | None = None,
  stochastic_rounding: bool = False,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """The Nesterov update shared by :func:`scale_by_nesterov` and ``nesterov``.

  With ``learning_rate=None`` it returns the direction only ("pytorch" form,
  no weight decay, ``lookahead_includes_lr`` False); otherwise the full
  signed update. See :func:`nag_optax.nesterov` for the rule and the
  arguments.
  """
  _validation.check_interval("momentum", momentum, 0.0, 1.0, schedule=True)
  _validation.check_interval("dampening", dampening, 0.0, 1.0)
  _validation.check_choice("form", form, FORMS)
  _validation.check_integer("seed", seed)
  accumulator_dtype = _validation.check_accumulator_dtype(accumulator_dtype)
  restarter = _restart.Restart(restart, restart_every)
  decay = _weight_decay.WeightDecay(
    weight_decay,
    mode="decoupled" if decoupled_weight_decay else "coupled",
    mask=weight_decay_mask,
  )
  direction_only = learning_rate is None
  if direction_only and (form != "pytorch" or decay.active):
    raise ValueError(
      "scale_by_nesterov is the PyTorch-form direction only: use "
      "nag_optax.nesterov for form='sutskever' or weight decay."
    )
  rule = _SUTSKEVER if form == "sutskever" else _PYTORCH
  momentum_fn = _validation.as_schedule("momentum", momentum)

  def init_fn(params):
    trace = _precision.zeros_like(params, accumulator_dtype)
    _warn_if_momentum_rounds_to_one(momentum, trace, stochastic_rounding)
    return ScaleByNesterovState(
      count=jnp.zeros([], jnp.int32),
      trace=trace,
      lookahead=jnp.zeros([], _precision.scalar_dtype()),
      lookahead_includes_lr=jnp.asarray(not direction_only),
      rng_key=jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
      **_restart.init_fields(),
    )

  def step(grads, state, learning_rate, value):
    restarter.check_value(value)
    h = _scalars(momentum_fn, dampening, state, learning_rate)
    traces = jax.tree.map(functools.partial(rule.trace, h), grads, state.trace)
    restart_now = restarter.decide(
      state, grads=grads, step=rule.theta_step(traces), value=value
    )
    traces = restarter.reset(restart_now, traces)
    # Round into the buffer's dtype first and look ahead with the buffer as
    # stored: the update then matches the state exactly (nesterov_eval_params
    # stays exact with a bfloat16 buffer), and XLA need not keep a copy of
    # the old buffer alive to recompute the unrounded value.
    stored, rng_key = _store(traces, state, stochastic_rounding)
    new_state = ScaleByNesterovState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      trace=stored,
      lookahead=rule.lookahead(h),
      lookahead_includes_lr=state.lookahead_includes_lr,
      rng_key=rng_key,
      **restarter.advance(state, restart_now, value),
    )
    return jax.tree.map(functools.partial(rule.output, h), grads, stored), new_state

  algorithm = _core.Algorithm(
    name="scale_by_nesterov" if direction_only else "nesterov",
    state_type=ScaleByNesterovState,
    init=init_fn,
    step=step,
    state_tree=lambda state: state.trace,
    applies_learning_rate=rule.applies_learning_rate,
  )
  return _core.transform(algorithm, learning_rate, decay)


def _store(
  traces: optax.Updates, state: ScaleByNesterovState, stochastic_rounding: bool
) -> tuple[optax.Updates, jax.Array]:
  """The new buffers in the state's dtypes, and the next PRNG key."""
  leaves, treedef = jax.tree.flatten(traces)
  if not stochastic_rounding or not leaves:  # No leaves: nothing to round.
    return optax.tree.cast_like(traces, state.trace), state.rng_key
  rng_key, subkey = jax.random.split(state.rng_key)
  keys = jax.random.split(subkey, len(leaves))
  stored = [
    _precision.stochastic_round(t, old.dtype, k)
    for t, old, k in zip(leaves, jax.tree.leaves(state.trace), keys, strict=True)
  ]
  return jax.tree.unflatten(treedef, stored), rng_key


def scale_by_nesterov(
  momentum: optax.ScalarOrSchedule = 0.9,
  *,
  dampening: jax.typing.ArrayLike = 0.0,
  accumulator_dtype: jax.typing.DTypeLike | None = None,
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

  Complex parameters are supported as in :func:`nag_optax.nesterov` (the rule
  is linear; the gradient restart tests the real part of the conjugated inner
  product). The state's ``lookahead_includes_lr`` is False: pass the learning
  rate to :func:`nag_optax.nesterov_eval_params`.

  Args:
    momentum: momentum in [0, 1), or a schedule of the momentum count.
    dampening: PyTorch's dampening in [0, 1); the first gradient after the
      start or a restart enters undamped.
    accumulator_dtype: float dtype of the momentum buffer; None uses the
      params'.
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
