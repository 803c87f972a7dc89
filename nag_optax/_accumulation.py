"""Gradient accumulation that runs the inner optimizer only when it emits.

:func:`accumulate_gradients` is a drop-in for ``optax.MultiSteps`` (same
arguments, same results) with two differences that matter at scale: the inner
update sits in the taken branch of a ``lax.cond`` and runs only on emitted
steps, and with ``axis_name`` the accumulated gradient is averaged across
devices once per emitted step instead of once per micro-batch.
"""

import weakref
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nag_optax import _validation


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
      ``optax.MultiSteps`` holds zeros). With ``axis_name`` it is
      device-local: each device's own micro-gradients, never averaged in
      place.
    skip_state: what ``should_skip_update_fn`` returned at the last call
      (``()`` without one).
  """

  mini_step: jax.Array
  gradient_step: jax.Array
  emitted: jax.Array
  inner_opt_state: Any
  acc_grads: Any
  skip_state: Any = ()


def _axis_names(axis_name: Any) -> tuple[Any, ...]:
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _check_axis_bound(axis_name: Any) -> None:
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


def _varying_axes(x: Any) -> frozenset:
  """Mesh axes along which ``x`` varies inside ``shard_map`` (else empty)."""
  aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))  # jax < 0.10


def _cond_with_matching_varying_axes(pred, false_fn, true_fn, operands):
  """``lax.cond`` whose branch outputs are cast to a common varying type.

  Under ``jax.shard_map`` (with its default type checks) the branches of a
  conditional must agree on which outputs vary across devices: the emitting
  branch's ``pmean`` makes the gradient device-invariant while the pass-through
  branch keeps the device-local accumulator. Each output leaf is cast
  (``jax.lax.pcast(..., to="varying")``, free at run time) to the union of the
  branches' varying axes. Outside ``shard_map`` nothing is cast.

  The no-op branch is the false one (XLA's branch 0): it then passes the
  carried buffers through instead of copying them.
  """
  branches = (false_fn, true_fn)
  shapes = [jax.eval_shape(branch, *operands) for branch in branches]
  union = jax.tree.map(
    lambda *leaves: frozenset().union(*map(_varying_axes, leaves)), *shapes
  )

  def cast(tree):
    def vary(x, axes):
      missing = axes - _varying_axes(x)
      if not missing:
        return x
      return jax.lax.pcast(x, tuple(sorted(missing, key=str)), to="varying")

    return jax.tree.map(vary, tree, union)

  return jax.lax.cond(
    pred,
    lambda *ops: cast(true_fn(*ops)),
    lambda *ops: cast(false_fn(*ops)),
    *operands,
  )


def _check_accumulator_dtype(accumulator_dtype: Any) -> Any:
  if accumulator_dtype is None:
    return None
  dtype = jnp.dtype(accumulator_dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"accumulator_dtype must be a float dtype, got {dtype}.")
  return dtype


def _check_every_k(every_k_schedule: Any) -> Callable[[jax.Array], Any]:
  if callable(every_k_schedule):
    return every_k_schedule
  try:
    _validation.check_positive_int("every_k_schedule", every_k_schedule)
  except ValueError as error:
    raise ValueError(
      f"{error} every_k_schedule is the number of micro-batches per emitted "
      "step (an int >= 1) or a schedule returning it."
    ) from None
  k = int(every_k_schedule)
  return lambda gradient_step: k


def accumulate_gradients(
  optimizer: optax.GradientTransformation,
  every_k_schedule: int | Callable[[jax.Array], Any],
  *,
  axis_name: Any = None,
  use_grad_mean: bool = True,
  accumulator_dtype: Any = jnp.float32,
  should_skip_update_fn: Callable[..., tuple[jax.Array, Any]] | None = None,
) -> optax.GradientTransformationExtraArgs:
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

  For complete data-parallel training steps built on this (pmap, jit with
  shard_map, multi-process) see :mod:`nag_optax.parallel`.

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
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AccumulateGradientsState`. Extra keyword arguments of ``update``
    (e.g. ``value=loss``) reach the inner optimizer on emitted steps.

  Raises:
    ValueError: for ``every_k_schedule`` < 1 (or not an integer), a
      non-float ``accumulator_dtype``, or, at ``update``, an ``axis_name``
      that no enclosing ``pmap``/``shard_map`` binds.

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

  References:
    optax.MultiSteps, https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html

    Goyal et al., Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour,
    2017, https://arxiv.org/abs/1706.02677
  """
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
      f"optimizer must be an optax.GradientTransformation, got {optimizer!r}."
    )
  inner = optax.with_extra_args_support(optimizer)
  every_k_fn = _check_every_k(every_k_schedule)
  accumulator_dtype = _check_accumulator_dtype(accumulator_dtype)
  if axis_name is not None:
    for name in _axis_names(axis_name):
      try:
        hash(name)
      except TypeError:
        raise ValueError(
          f"axis_name must be a name or a tuple of names, got {axis_name!r}."
        ) from None
  if should_skip_update_fn is not None and not callable(should_skip_update_fn):
    raise ValueError(
      "should_skip_update_fn must be None or a callable "
      f"(updates, gradient_step, params) -> (bool, state), got "
      f"{should_skip_update_fn!r}."
    )

  def check_k_at_start():
    k = _validation.concrete_value(every_k_fn(jnp.zeros([], jnp.int32)))
    if k is not None and (k.shape != () or int(k) < 1):
      raise ValueError(
        f"every_k_schedule(0) must be an integer >= 1, got {k.tolist()!r}."
      )

  def init_fn(params):
    check_k_at_start()
    gradient_step = jnp.zeros([], jnp.int32)
    if should_skip_update_fn is None:
      skip_state = ()
    else:
      _, skip_state = should_skip_update_fn(
        optax.tree.zeros_like(params), gradient_step, params
      )
    return AccumulateGradientsState(
      mini_step=jnp.zeros([], jnp.int32),
      gradient_step=gradient_step,
      emitted=jnp.zeros([], jnp.bool_),
      inner_opt_state=inner.init(params),
      acc_grads=optax.tree.zeros_like(params, dtype=accumulator_dtype),
      skip_state=skip_state,
    )

  def accumulate_then(updates, state, params, on_emit, on_micro):
    """The shared body: accumulate, then ``lax.cond(emit, on_emit, on_micro)``.

    ``on_emit(mean, inner_state, params)`` gets the mean averaged across
    ``axis_name`` and cast to the gradient's dtype; ``on_micro(output_shapes,
    acc, inner_state, params)`` gets the shapes of ``on_emit``'s output. Both
    return ``(output, inner_state)``.
    """
    if axis_name is not None:
      _check_axis_bound(axis_name)
    _validation.check_trees_match("gradient", updates, "accumulator", state.acc_grads)
    k = every_k_fn(state.gradient_step)
    mini_step = state.mini_step

    if should_skip_update_fn is None:
      skip, skip_state = None, ()
    else:
      skip, skip_state = should_skip_update_fn(updates, state.gradient_step, params)
      skip = jnp.asarray(skip)
      if (skip.dtype, skip.shape) != (jnp.bool_, ()):
        raise ValueError(
          "should_skip_update_fn must return a boolean scalar array, got dtype "
          f"{skip.dtype} and shape {skip.shape}."
        )
      if axis_name is not None:
        # Every device must take the same branch (the emitting one holds a
        # collective): skip everywhere if any device skips.
        skip = jax.lax.pmax(skip.astype(jnp.int32), axis_name) > 0

    def accumulate(grads, acc):
      # A cycle starts from the gradient itself (mini_step 0): nothing resets
      # the accumulator after an emitted step, so each call makes one pass
      # over it, in place, computed once and read by the emitting branch.
      # (Resetting it after the conditional costs a second pass; passing it
      # through the branches makes XLA copy it.)
      if use_grad_mean:  # Welford's running mean, as optax.MultiSteps.
        step = lambda g, a: a + (g - a) / (mini_step + 1)
      else:
        step = lambda g, a: g + a
      return jax.tree.map(
        lambda g, a: jnp.where(mini_step == 0, g, step(g, a)).astype(a.dtype),
        grads,
        acc,
      )

    acc = accumulate(updates, state.acc_grads)
    if skip is not None:  # A skipped call leaves the accumulator as it was.
      acc = jax.tree.map(lambda n, a: jnp.where(skip, a, n), acc, state.acc_grads)

    def emit_branch(mean, inner_state, params):
      if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
      mean = jax.tree.map(lambda m, g: m.astype(g.dtype), mean, updates)
      return on_emit(mean, inner_state, params)

    emit = mini_step == k - 1
    next_mini_step = optax.safe_increment(mini_step) % k
    if skip is not None:
      emit = jnp.logical_and(emit, jnp.logical_not(skip))
      next_mini_step = jnp.where(skip, mini_step, next_mini_step)

    operands = (acc, state.inner_opt_state, params)
    output_shapes = jax.eval_shape(emit_branch, *operands)[0]
    output, inner_state = _cond_with_matching_varying_axes(
      emit, lambda *ops: on_micro(output_shapes, *ops), emit_branch, operands
    )
    new_state = AccumulateGradientsState(
      mini_step=jnp.asarray(next_mini_step, jnp.int32),
      gradient_step=jnp.where(
        emit, optax.safe_increment(state.gradient_step), state.gradient_step
      ).astype(jnp.int32),
      emitted=jnp.asarray(emit, jnp.bool_),
      inner_opt_state=inner_state,
      acc_grads=acc,
      skip_state=skip_state,
    )
    return output, new_state

  def update_fn(updates, state, params=None, **extra_args):
    def on_emit(mean, inner_state, params):
      return inner.update(mean, inner_state, params, **extra_args)

    def on_micro(output_shapes, acc, inner_state, params):
      del acc, params
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), output_shapes)
      return zeros, inner_state

    return accumulate_then(updates, state, params, on_emit, on_micro)

  def update_and_apply_fn(grads, state, params, **extra_args):
    # update_fn followed by optax.apply_updates, with the application inside
    # the emitting branch: micro-steps neither write zero updates nor touch
    # the parameters, and the emitted step fuses update and application.
    def on_emit(mean, inner_state, params):
      inner_updates, inner_state = inner.update(mean, inner_state, params, **extra_args)
      return optax.apply_updates(params, inner_updates), inner_state

    def on_micro(output_shapes, acc, inner_state, params):
      del output_shapes, acc
      return params, inner_state

    return accumulate_then(grads, state, params, on_emit, on_micro)

  tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  _UPDATE_AND_APPLY[update_fn] = update_and_apply_fn
  return tx


# accumulate_gradients' update function -> its update-and-apply twin
# (update_and_apply_fn there), for nag_optax.parallel. Weak keys: an entry
# lives as long as the transformation holding the update function.
_UPDATE_AND_APPLY: "weakref.WeakKeyDictionary[Callable, Callable]" = (
  weakref.WeakKeyDictionary()
)


def update_and_apply_for(
  optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[Any, Any]] | None:
  """``fn(grads, state, params, **extra) -> (new_params, new_state)`` or None.

  For an optimizer returned by :func:`accumulate_gradients` itself (not
  wrapped, e.g. in ``optax.chain``), a function equal to its ``update``
  followed by ``optax.apply_updates`` that applies the update inside the
  emitting branch: on micro-steps it writes no zero updates and passes the
  parameters through untouched. None for any other optimizer.
  """
  try:
    return _UPDATE_AND_APPLY.get(optimizer.update)
  except TypeError:  # not weak-referenceable: not ours
    return None


def _find_state(opt_state: Any, caller: str) -> AccumulateGradientsState:
  is_state = lambda x: isinstance(x, AccumulateGradientsState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  if len(found) != 1:
    raise ValueError(
      f"{caller} needs exactly one accumulate_gradients state in opt_state, "
      f"found {len(found)}."
    )
  return found[0]


def accumulation_emitted(opt_state: Any) -> jax.Array:
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


def accumulation_gradient_step(opt_state: Any) -> jax.Array:
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
