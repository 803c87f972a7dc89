"""Gradient accumulation that runs the inner optimizer only when it emits.

:func:`accumulate_gradients` is a drop-in for ``optax.MultiSteps`` (same
arguments, same results) with two differences that matter at scale: the inner
update sits in the taken branch of a ``lax.cond`` and runs only on emitted
steps, and with ``axis_name`` the accumulated gradient is averaged across
devices once per emitted step instead of once per micro-batch. It returns an
:class:`AccumulateGradients`, whose two halves (``accumulate`` and ``emit``)
are public for code that writes its own training step.
"""

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import optax

from nag_optax import _substate
from nag_optax import _validation
from nag_optax import _vma


class AccumulateGradientsState(NamedTuple):
  """State of :func:`nag_optax.accumulate_gradients`.

  The field names follow ``optax.MultiStepsState``, so
  ``optax.tree.get(opt_state, "gradient_step")`` works for both.

  Attributes:
    mini_step: micro-batches accumulated in the current cycle (int32); 0 right
      after an emitted step.
    gradient_step: emitted steps so far (int32), i.e. updates of the inner
      optimizer: what its schedules count.
    emitted: whether the last call emitted (bool): its updates are the inner
      optimizer's and not zeros.
    inner_opt_state: the wrapped optimizer's state (a pytree child, so
      :func:`nag_optax.nesterov_eval_params` finds a Nesterov state in it).
    acc_grads: the running mean (or sum) of this cycle's micro-gradients, in
      ``accumulator_dtype``. Right after an emitted step (``mini_step`` 0) it
      still holds that cycle's value, which the next call replaces (where
      ``optax.MultiSteps`` holds zeros). Across devices it is device-local:
      each device's own micro-gradients, never averaged in place.
    skip_state: what ``should_skip_update_fn`` returned at the last call
      (``()`` without one); device-local like ``acc_grads``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import nag_optax
    >>> tx = nag_optax.accumulate_gradients(optax.sgd(0.1), 2)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> state.mini_step, state.gradient_step, state.emitted
    (Array(0, dtype=int32), Array(0, dtype=int32), Array(False, dtype=bool))
  """

  mini_step: jax.Array
  gradient_step: jax.Array
  emitted: jax.Array
  inner_opt_state: optax.OptState
  acc_grads: optax.Updates
  skip_state: optax.OptState = ()


AxisName = str | tuple[str, ...]
"""The name of a mapped axis (``jax.pmap``, ``jax.shard_map``), or a tuple of them."""

EveryK = int | Callable[[jax.Array], jax.typing.ArrayLike]
"""Micro-batches per emitted step: an int, or a function of the emitted-step count."""

_Out = TypeVar("_Out")


def _axis_names(axis_name: AxisName) -> tuple[str, ...]:
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _check_axis_bound(axis_name: AxisName) -> None:
  """Raises a ValueError naming the fix when ``axis_name`` is not bound."""
  for name in _axis_names(axis_name):
    try:
      jax.lax.axis_size(name)
    except NameError as error:
      raise ValueError(
        f"accumulate_gradients(axis_name={axis_name!r}) averages gradients "
        f"across the mapped axis {name!r}, but update() was called outside a "
        f"mapped context binding it: call it inside jax.pmap(..., "
        f"axis_name={name!r}) or jax.shard_map over a mesh with that axis, or "
        "pass axis_name=None."
      ) from error


def cond(
  pred: jax.typing.ArrayLike,
  true_fn: Callable[..., _Out],
  false_fn: Callable[..., _Out],
  *operands: Any,
) -> _Out:
  """``jax.lax.cond`` whose branch outputs are cast to a common varying type.

  Under ``jax.shard_map`` (with its default type checks) the branches of a
  conditional must agree on which outputs vary across devices: an emitting
  branch's ``pmean`` makes the gradient device-invariant while a
  pass-through branch keeps the device-local accumulator. Each output leaf
  is cast (``jax.lax.pcast(..., to="varying")``, free at run time) to the
  union of the branches' varying axes. Outside ``shard_map`` nothing is cast.

  The no-op branch should be ``false_fn`` (XLA's branch 0): it then passes
  the carried buffers through instead of copying them. Without varying
  operands (outside ``shard_map``) this is ``jax.lax.cond`` itself.
  """
  if not any(map(_vma.varying_axes, jax.tree.leaves(operands))):
    return jax.lax.cond(pred, true_fn, false_fn, *operands)
  shapes = [jax.eval_shape(branch, *operands) for branch in (false_fn, true_fn)]
  union = jax.tree.map(
    lambda *leaves: frozenset().union(*map(_vma.varying_axes, leaves)), *shapes
  )
  cast = lambda tree: jax.tree.map(_vma.vary, tree, union)

  return jax.lax.cond(
    pred,
    lambda *ops: cast(true_fn(*ops)),
    lambda *ops: cast(false_fn(*ops)),
    *operands,
  )


def _check_every_k(
  every_k_schedule: EveryK,
) -> Callable[[jax.Array], jax.typing.ArrayLike]:
  if callable(every_k_schedule):
    return every_k_schedule
  try:
    _validation.check_positive_int(
      "every_k_schedule", every_k_schedule, allow_none=False
    )
  except ValueError as error:
    raise ValueError(
      f"{error} every_k_schedule is the number of micro-batches per emitted "
      "step (an int >= 1) or a schedule returning it."
    ) from None
  k = int(every_k_schedule)
  return lambda gradient_step: k


def _check_axis_name(axis_name: AxisName | None) -> None:
  if axis_name is None:
    return
  for name in _axis_names(axis_name):
    try:
      hash(name)
    except TypeError:
      raise ValueError(
        f"axis_name must be a name or a tuple of names, got {axis_name!r}."
      ) from None


def _check_optimizer(optimizer: object) -> optax.GradientTransformationExtraArgs:
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
      f"optimizer must be an optax.GradientTransformation, got {optimizer!r}."
    )
  return optax.with_extra_args_support(optimizer)  # type: ignore[arg-type]


def _check_should_skip(
  should_skip_update_fn: optax.ShouldSkipUpdateFunction | None,
) -> None:
  if should_skip_update_fn is not None and not callable(should_skip_update_fn):
    raise ValueError(
      "should_skip_update_fn must be None or a callable "
      f"(updates, gradient_step, params) -> (bool, state), got "
      f"{should_skip_update_fn!r}."
    )


def _mean_across(axis_name: AxisName | None, tree: optax.Updates) -> optax.Updates:
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
  return jax.tree.map(lambda x, g: x.astype(g.dtype), tree, like)


def _zeros_like_shapes(tree: Any) -> Any:
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class _Accumulation:
  """The rule behind :func:`accumulate_gradients`, its arguments checked.

  Its bound ``init`` and ``update`` are the two fields of the
  :class:`AccumulateGradients` that ``accumulate_gradients`` returns, and
  its other methods are that transformation's public halves.
  """

  inner: optax.GradientTransformationExtraArgs
  every_k: Callable[[jax.Array], jax.typing.ArrayLike]
  axis_name: AxisName | None
  use_grad_mean: bool
  accumulator_dtype: jnp.dtype | None
  should_skip_update_fn: optax.ShouldSkipUpdateFunction | None

  def init(self, params: optax.Params) -> AccumulateGradientsState:
    self._check_k_at_start()
    gradient_step = jnp.zeros([], jnp.int32)
    skip_state: optax.OptState = ()
    if self.should_skip_update_fn is not None:
      _, skip_state = self.should_skip_update_fn(
        optax.tree.zeros_like(params), gradient_step, params
      )
    return AccumulateGradientsState(
      mini_step=jnp.zeros([], jnp.int32),
      gradient_step=gradient_step,
      emitted=jnp.zeros([], jnp.bool_),
      inner_opt_state=self.inner.init(params),
      acc_grads=optax.tree.zeros_like(params, dtype=self.accumulator_dtype),
      skip_state=skip_state,
    )

  def update(
    self,
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    grads = updates
    state, emitting = self.accumulate(grads, self._check_state(state), params, None)

    def on_emit(state, params):
      return self.emit(self._cross_device_mean(state, grads), state, params, extra_args)

    def on_micro(state, params):
      return _zeros_like_shapes(jax.eval_shape(on_emit, state, params)[0]), state

    return cond(emitting, on_emit, on_micro, state, params)

  def update_and_apply(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params,
    extra_args: dict[str, Any],
  ) -> tuple[optax.Params, AccumulateGradientsState]:
    state, emitting = self.accumulate(grads, state, params, None)

    def on_emit(params, state):
      mean = self._cross_device_mean(state, grads)
      updates, state = self.emit(mean, state, params, extra_args)
      return optax.apply_updates(params, updates), state

    def on_micro(params, state):
      return params, state

    return cond(emitting, on_emit, on_micro, params, state)

  def accumulate(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params | None,
    axis_name: AxisName | None,
  ) -> tuple[AccumulateGradientsState, jax.Array]:
    state = self._check_state(state)
    _validation.check_trees_match("gradient", grads, "accumulator", state.acc_grads)
    axis = self.axis_name if axis_name is None else axis_name
    if axis is not None:
      _check_axis_bound(axis)
    skip, skip_state = self._skip(grads, state, params, axis)
    acc = self._added(grads, state)
    emitting = state.mini_step == self.every_k(state.gradient_step) - 1
    mini_step = jnp.where(emitting, 0, optax.safe_increment(state.mini_step))
    if skip is not None:  # A skipped call leaves everything as it was.
      acc = jax.tree.map(lambda n, a: jnp.where(skip, a, n), acc, state.acc_grads)
      emitting = jnp.logical_and(emitting, jnp.logical_not(skip))
      mini_step = jnp.where(skip, state.mini_step, mini_step)
    gradient_step = jnp.where(
      emitting, optax.safe_increment(state.gradient_step), state.gradient_step
    )
    new_state = state._replace(
      mini_step=jnp.asarray(mini_step, jnp.int32),
      gradient_step=gradient_step.astype(jnp.int32),
      emitted=jnp.asarray(emitting, jnp.bool_),
      acc_grads=acc,
      skip_state=skip_state,
    )
    return new_state, emitting

  def emit(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params | None,
    extra_args: dict[str, Any],
  ) -> tuple[optax.Updates, AccumulateGradientsState]:
    state = self._check_state(state)
    updates, inner_state = self.inner.update(
      grads, state.inner_opt_state, params, **extra_args
    )
    return updates, state._replace(inner_opt_state=inner_state)

  def _cross_device_mean(
    self, state: AccumulateGradientsState, grads: optax.Updates
  ) -> optax.Updates:
    """The cycle's accumulated gradient averaged across ``axis_name`` (the one
    collective of an emitted step), in the gradient's dtype."""
    return _cast_like(_mean_across(self.axis_name, state.acc_grads), grads)

  def _added(
    self, grads: optax.Updates, state: AccumulateGradientsState
  ) -> optax.Updates:
    """The accumulator with this call's gradient added, in its own dtype.

    A cycle starts from the gradient itself (mini_step 0): nothing resets
    the accumulator after an emitted step, so each call makes one pass over
    it, in place, read by the emitting branch.
    """
    mini_step = state.mini_step
    if self.use_grad_mean:  # Welford's running mean, as optax.MultiSteps.
      step = lambda g, a: a + (g - a) / (mini_step + 1)
    else:
      step = lambda g, a: g + a
    return jax.tree.map(
      lambda g, a: jnp.where(mini_step == 0, g, step(g, a)).astype(a.dtype),
      grads,
      state.acc_grads,
    )

  def _skip(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params | None,
    axis: AxisName | None,
  ) -> tuple[jax.Array | None, optax.OptState]:
    """``should_skip_update_fn``'s verdict (None without one) and state."""
    if self.should_skip_update_fn is None:
      return None, ()
    skip, skip_state = self.should_skip_update_fn(grads, state.gradient_step, params)
    skip = jnp.asarray(skip)
    if skip.dtype != jnp.bool_ or skip.shape != ():
      raise ValueError(
        "should_skip_update_fn must return a boolean scalar array, got dtype "
        f"{skip.dtype} and shape {skip.shape}."
      )
    if axis is not None:
      # Every device must take the same branch (the emitting one may hold a
      # collective): skip everywhere if any device skips.
      skip = jax.lax.pmax(skip.astype(jnp.int32), axis) > 0
    return skip, skip_state

  def _check_k_at_start(self) -> None:
    k = _validation.concrete_value(self.every_k(jnp.zeros([], jnp.int32)))
    if k is not None and (k.shape != () or int(k) < 1):
      raise ValueError(
        f"every_k_schedule(0) must be an integer >= 1, got {k.tolist()!r}."
      )

  @staticmethod
  def _check_state(state: object) -> AccumulateGradientsState:
    return _validation.check_state(
      "accumulate_gradients",
      state,
      AccumulateGradientsState,
      hint="Pass the state this transformation's init returned, not the inner "
      "optimizer's own state: it holds that one as inner_opt_state.",
    )


class AccumulateGradients(optax.GradientTransformationExtraArgs):
  """What :func:`accumulate_gradients` returns: an optax transformation with
  public halves.

  ``init`` and ``update`` make it a drop-in for ``optax.MultiSteps``. The
  two halves of ``update`` are public for code that writes its own training
  step (:mod:`nag_optax.parallel` does): :meth:`accumulate` adds a
  micro-batch gradient to the device-local accumulator and says whether the
  cycle is complete, without any collective; :meth:`emit` runs the inner
  optimizer on the accumulated gradient, which the caller may first average
  across devices (``pmean``) or reduce-scatter to optimizer-state shards.
  ``update`` is exactly::

    state, emitting = tx.accumulate(grads, state, params)
    updates, state = lax.cond(
        emitting,
        lambda: tx.emit(pmean(state.acc_grads), state, params),  # axis_name
        lambda: (zeros, state))

  :meth:`update_and_apply` is ``update`` followed by ``optax.apply_updates``
  with the application inside the emitting branch (micro-steps neither
  write zero updates nor touch the parameters), and :meth:`has_updated`
  reads whether the last call emitted, as ``optax.MultiSteps.has_updated``.

  It is an ``optax.GradientTransformationExtraArgs`` (the pair ``init``,
  ``update``, so that ``optax.chain`` passes extra arguments on) and holds
  nothing else: ``init`` and ``update`` are bound methods of the rule that
  the other methods and attributes read, so ``_replace``, ``copy`` and
  unpacking (``init, update = tx``) keep working.

  Attributes:
    inner: the inner optimizer (an ``optax.GradientTransformationExtraArgs``).
    axis_name: the mapped axis ``update`` averages across, or None.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import nag_optax
    >>> tx = nag_optax.accumulate_gradients(optax.sgd(0.1), 2)
    >>> isinstance(tx, nag_optax.AccumulateGradients)
    True
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    ...   print(updates["w"], nag_optax.accumulation_emitted(state))
    [0. 0.] False
    [-0.1 -0.1] True
  """

  __slots__ = ()

  @property
  def _rule(self) -> _Accumulation:
    rule = getattr(self.update, "__self__", None)
    if not isinstance(rule, _Accumulation):
      raise TypeError(
        "This AccumulateGradients' update is not the one accumulate_gradients "
        f"made (got {self.update!r}): its accumulate, emit and "
        "update_and_apply belong to that update. Build a new transformation "
        "with accumulate_gradients instead of replacing update."
      )
    return rule

  @property
  def inner(self) -> optax.GradientTransformationExtraArgs:
    return self._rule.inner

  @property
  def axis_name(self) -> AxisName | None:
    return self._rule.axis_name

  def accumulate(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params | None = None,
    *,
    axis_name: AxisName | None = None,
  ) -> tuple[AccumulateGradientsState, jax.Array]:
    """Adds one micro-batch gradient to the accumulator: ``update``'s first half.

    Advances the counters as ``update`` does (``mini_step``,
    ``gradient_step``, ``emitted``, ``skip_state``) and leaves
    ``inner_opt_state`` untouched. When the call completes a cycle,
    ``acc_grads`` holds the cycle's mean (or sum) of this device's
    micro-gradients, in ``accumulator_dtype``: average it across devices if
    needed, cast it to the gradient's dtype and pass it to :meth:`emit`.

    Args:
      grads: this micro-batch's gradient (device-local).
      state: the transformation's state.
      params: the parameters (for ``should_skip_update_fn``).
      axis_name: with ``should_skip_update_fn``, the mapped axis over which
        a skip on any device skips the call on every device (default: the
        transformation's ``axis_name``). The only collective here.

    Returns:
      ``(state, emitting)``: the advanced state and a boolean scalar, True
      when this call completes a cycle.
    """
    return self._rule.accumulate(grads, state, params, axis_name)

  def emit(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, AccumulateGradientsState]:
    """The inner optimizer's update of an accumulated gradient: the emitted step.

    Call it where :meth:`accumulate` returned ``emitting=True`` (inside the
    true branch of a ``lax.cond``), with ``grads`` the cycle's accumulated
    gradient (``state.acc_grads``, averaged across devices by the caller, in
    the gradient's dtype).

    Returns:
      ``(updates, state)``: the inner optimizer's updates and the state
      holding its new ``inner_opt_state``.
    """
    return self._rule.emit(grads, state, params, extra_args)

  def update_and_apply(
    self,
    grads: optax.Updates,
    state: AccumulateGradientsState,
    params: optax.Params,
    **extra_args: Any,
  ) -> tuple[optax.Params, AccumulateGradientsState]:
    """``update`` then ``optax.apply_updates``, applied inside the emitting branch.

    Equal to ``updates, state = tx.update(grads, state, params)`` followed by
    ``optax.apply_updates(params, updates)``, except that on micro-steps the
    parameters pass through untouched (no zero updates are written or
    added), and on emitted steps update and application share one branch.
    XLA may then contract ``p + lr * x`` into a fused multiply-add: the
    parameters can differ from the two-call form in the last bit.

    Returns:
      ``(new_params, state)``.
    """
    return self._rule.update_and_apply(grads, state, params, extra_args)

  @staticmethod
  def has_updated(state: AccumulateGradientsState) -> jax.Array:
    """Whether the last call emitted the inner optimizer's update."""
    return state.emitted


def accumulate_gradients(
  optimizer: optax.GradientTransformation,
  every_k_schedule: EveryK,
  *,
  axis_name: AxisName | None = None,
  use_grad_mean: bool = True,
  accumulator_dtype: jax.typing.DTypeLike | None = jnp.float32,
  should_skip_update_fn: optax.ShouldSkipUpdateFunction | None = None,
) -> AccumulateGradients:
  r"""Accumulates micro-batch gradients; applies ``optimizer`` every k-th call.

  With :math:`g_1, \dots, g_k` the gradients passed over one cycle of
  :math:`k` = ``every_k_schedule(gradient_step)`` calls, the first
  :math:`k - 1` calls return zero updates and the :math:`k`-th returns the
  inner optimizer's update of the mean (or, with ``use_grad_mean=False``, the
  sum)

  .. math::

    \bar g = \frac{1}{k} \sum_{i=1}^{k} g_i, \qquad
    u, s \leftarrow \mathrm{optimizer.update}(\bar g, s, \mathrm{params})

  exactly as ``optax.MultiSteps`` with the same arguments: the same running
  (Welford) mean in ``accumulator_dtype``, inner schedules that count emitted
  steps, ``every_k_schedule`` an int or a schedule of the emitted-step count,
  and micro-gradients rejected by ``should_skip_update_fn`` (e.g.
  ``optax.skip_not_finite``) left out as if the call never happened.

  Unlike ``optax.MultiSteps``, the inner update sits in the taken branch of a
  ``lax.cond``: it runs **only** on emitted steps, so a micro-step costs one
  accumulation (no inner update, no copy of its state), and with ``axis_name``
  (inside ``jax.pmap`` or ``jax.shard_map``) the accumulated gradient is
  averaged across that axis **once per emitted step**,

  .. math::

    \bar g = \mathrm{pmean}_{\mathrm{axis\_name}}\Big(\frac{1}{k}
    \sum_{i=1}^{k} g_i^{(\mathrm{device})}\Big),

  which equals "``pmean`` every micro-gradient, then ``optax.MultiSteps``"
  with k-times less communication. Pass device-local gradients then (no
  ``pmean`` of your own). The accumulator ``acc_grads`` is device-local
  between emitted steps; the counters stay replicated, as they must for the
  collective inside the conditional. Under ``jax.shard_map`` take the
  gradient with respect to parameters cast to varying
  (``jax.lax.pcast(params, axis_name, to="varying")``): the gradient of a
  replicated parameter arrives already summed over devices.

  With ``axis_name`` and ``should_skip_update_fn``, each device tests its own
  micro-gradient and the call is skipped on every device if it is skipped on
  any (one boolean all-reduce per call: without a skip function, micro-steps
  communicate nothing).

  Two deliberate differences in the state. The first call of a cycle
  *replaces* the accumulator with its gradient instead of adding to zeros:
  one pass over the accumulator per call, written in place, no reset after
  the emitted step (so ``acc_grads`` differs from ``optax.MultiSteps``' only
  right after an emitted step, where it still holds the cycle just
  applied). And one non-finite micro-gradient (without a skip function)
  spoils only its own cycle, where ``optax.MultiSteps``, which multiplies
  the accumulator by 0, carries the NaN into every later one.

  The returned :class:`AccumulateGradients` also offers ``update``'s two
  halves (``accumulate``, ``emit``) and ``update_and_apply``, which applies
  the update inside the emitting branch. :mod:`nag_optax.parallel` builds
  complete data-parallel steps on them (pass this transformation outermost
  there, with the rest of the optimizer inside it). To accumulate inside one
  compiled step instead (nothing carried between calls), see the
  ``micro_batches`` argument of the :mod:`nag_optax.parallel` builders.

  Read whether a call emitted, and the emitted-step count, with
  :func:`nag_optax.accumulation_emitted` and
  :func:`nag_optax.accumulation_gradient_step` (log the learning rate from the
  latter: a Flax ``TrainState.step`` counts micro-steps).

  Args:
    optimizer: the inner optimizer, applied to the accumulated gradient.
    every_k_schedule: micro-batches per emitted step: an int >= 1, or a
      function of the emitted-step count returning one (evaluated at the start
      of each cycle).
    axis_name: None, or the name (or tuple of names) of the mapped axis of
      ``jax.pmap`` / ``jax.shard_map`` to average the accumulated gradient
      over on emitted steps.
    use_grad_mean: average the micro-gradients (True) or sum them (False).
      Across devices the gradient is always averaged.
    accumulator_dtype: dtype of the accumulator (None: the params'); the
      inner optimizer receives the gradient's dtype.
    should_skip_update_fn: optional ``fn(updates, gradient_step, params) ->
      (bool scalar, skip_state)`` as in ``optax.MultiSteps``, e.g.
      ``optax.skip_not_finite``.

  Returns:
    An :class:`AccumulateGradients` (an
    ``optax.GradientTransformationExtraArgs``) whose state is an
    :class:`AccumulateGradientsState`. Extra keyword arguments of ``update``
    (e.g. ``value=loss``) reach the inner optimizer on emitted steps.

  Raises:
    ValueError: for ``every_k_schedule`` < 1 (or not an integer), a
      non-float ``accumulator_dtype``, or, at ``update``, an ``axis_name``
      that no enclosing ``pmap``/``shard_map`` binds or a state that is not
      an :class:`AccumulateGradientsState` (e.g. the inner optimizer's).

  Example:
    >>> import jax.numpy as jnp, optax, nag_optax
    >>> tx = nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), 2)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1.0]), state)
    >>> print(updates, nag_optax.accumulation_emitted(state))
    [0.] False
    >>> updates, state = tx.update(jnp.array([3.0]), state)
    >>> print(updates, nag_optax.accumulation_emitted(state))
    [-0.38] True
    >>> params, state = tx.update_and_apply(jnp.array([2.0]), state, params)
    >>> print(params, tx.has_updated(state))
    [1.] False

  References:
    optax.MultiSteps, https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html

    Goyal et al., Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour,
    2017, https://arxiv.org/abs/1706.02677
  """
  rule = _Accumulation(
    inner=_check_optimizer(optimizer),
    every_k=_check_every_k(every_k_schedule),
    axis_name=axis_name,
    use_grad_mean=use_grad_mean,
    accumulator_dtype=_validation.check_accumulator_dtype(accumulator_dtype),
    should_skip_update_fn=should_skip_update_fn,
  )
  _check_axis_name(axis_name)
  _check_should_skip(should_skip_update_fn)
  return AccumulateGradients(rule.init, rule.update)


def _find_state(opt_state: optax.OptState, caller: str) -> AccumulateGradientsState:
  return _substate.find_one(
    opt_state, AccumulateGradientsState, caller=caller, what="accumulate_gradients"
  )


def accumulation_emitted(opt_state: optax.OptState) -> jax.Array:
  """Whether the last ``update`` emitted the inner optimizer's update.

  Finds the :func:`nag_optax.accumulate_gradients` state anywhere inside
  ``opt_state`` (``optax.chain``, ``optax.inject_hyperparams`` ...). False on
  micro-steps (zero updates) and skipped calls. Under ``jax.pmap`` it works
  inside the step or on the replicated state (one value per device, all
  equal).

  Args:
    opt_state: an optimizer state holding exactly one such state.

  Returns:
    A boolean array.

  Example:
    >>> import jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), 2)
    >>> state = tx.init(jnp.zeros(2))
    >>> print(nag_optax.accumulation_emitted(state))
    False
  """
  return _find_state(opt_state, "accumulation_emitted").emitted


def accumulation_gradient_step(opt_state: optax.OptState) -> jax.Array:
  """The number of emitted steps: what the inner optimizer's schedules count.

  Finds the :func:`nag_optax.accumulate_gradients` state anywhere inside
  ``opt_state``. Log the learning rate as ``schedule(gradient_step - 1)``
  after an emitted step: a training-loop step counter counts micro-steps.

  Args:
    opt_state: an optimizer state holding exactly one such state.

  Returns:
    An int32 array.

  Example:
    >>> import jax.numpy as jnp, nag_optax
    >>> tx = nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), 2)
    >>> state = tx.init(jnp.zeros(2))
    >>> for _ in range(4):
    ...   _, state = tx.update(jnp.ones(2), state)
    >>> print(nag_optax.accumulation_gradient_step(state))
    2
  """
  return _find_state(opt_state, "accumulation_gradient_step").gradient_step
