"""The one data-parallel training step that every path of the package builds.

A step is written once, per device, in terms of a ``mapped(fn, in_kinds,
out_kinds)`` that runs ``fn`` on every device: under ``jax.pmap`` the whole
step already runs per device and ``mapped`` is the identity; on a mesh it is
a ``jax.shard_map`` region and the rest of the step (the optimizer update and
its application) runs under ``jax.jit``'s global view, where ZeRO-1 state
shards are placed by the compiler. Each value crossing a region has a kind:

* :data:`REPLICATED`: the same on every device (parameters, counters).
* :data:`LOCAL`: one value per device, stored on a mesh with a leading device
  axis sharded over the data axis (the accumulator of
  ``accumulate_gradients``, model state between emitted steps, metrics).
* :data:`BATCH`: the batch, split along its leading axis.
* a ``PartitionSpec``: a ZeRO-1 shard (a gradient reduce-scattered to the
  optimizer-state shards).
"""

from collections.abc import Callable
from collections.abc import Hashable
from typing import Any
from typing import NamedTuple
from typing import Protocol
from typing import TypeGuard
from typing import TypeVar
from typing import cast
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _accumulation
from nag_optax import _precision
from nag_optax import _vma

REPLICATED = "replicated"
LOCAL = "local"
BATCH = "batch"

Kind = str | jax.sharding.PartitionSpec
"""One leaf's kind: :data:`REPLICATED`, :data:`LOCAL`, :data:`BATCH` or a spec."""

LossFn = Callable[..., jax.Array | tuple[jax.Array, Any]]
"""``loss_fn(params, batch[, model_state])``: the loss, or ``(loss, aux)``,
``(loss, new_model_state)`` or ``(loss, (new_model_state, aux))``."""

_Tree = TypeVar("_Tree")


class TrainState(NamedTuple):
  """What a data-parallel step carries from one call to the next.

  Attributes:
    params: the model parameters.
    opt_state: the optimizer state.
    model_state: non-trained model variables (e.g. Flax ``batch_stats``), or
      None. With model state, ``loss_fn(params, batch, model_state)`` returns
      ``(loss, new_model_state)``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import nag_optax
    >>> from nag_optax import parallel
    >>> dp = parallel.jit_data_parallel(
    ...     lambda params, batch: jnp.sum(params["w"] * batch),
    ...     nag_optax.nesterov(0.1, 0.9), parallel.data_mesh(jax.devices()[:1]))
    >>> state = dp.init({"w": jnp.zeros(3)})
    >>> isinstance(state, parallel.TrainState), state._fields
    (True, ('params', 'opt_state', 'model_state'))
    >>> state.model_state is None
    True
  """

  params: optax.Params
  opt_state: optax.OptState
  model_state: optax.Params | None = None


class StateFn(Protocol):
  """``fn(params, model_state=None) -> TrainState``: ``init`` and
  ``abstract_state``."""

  def __call__(
    self, params: optax.Params, model_state: optax.Params | None = None
  ) -> TrainState: ...


class ToHost(Protocol):
  """``to_host(tree)``: the tree with a NumPy copy of each array."""

  @overload
  def __call__(self, tree: jax.Array) -> np.ndarray: ...

  @overload
  def __call__(self, tree: _Tree) -> _Tree: ...


class Step(Protocol):
  """``step(state, batch, **static) -> (state, metrics)``, compiled, with
  ``step.lower(state, batch, **static)`` giving the lowered program."""

  def __call__(
    self, state: TrainState, batch: Any, **static: Hashable
  ) -> tuple[TrainState, Any]: ...

  def lower(
    self, state: TrainState, batch: Any, **static: Hashable
  ) -> jax.stages.Lowered: ...


class DataParallel(NamedTuple):
  """A data-parallel training step and the placement functions it needs.

  Attributes:
    init: ``init(params, model_state=None) -> TrainState`` placed on the
      devices, with the optimizer state initialised there.
    step: ``step(state, batch) -> (state, metrics)``, compiled once; the
      input state is donated. ``step.lower(state, batch)`` gives the lowered
      program (``.compile().as_text()``, ``.cost_analysis()``). From the
      loss-based builders, ``metrics["loss"]`` (and ``metrics["aux"]`` with
      ``has_aux``) hold one value per device (a leading device axis), each
      the mean over that device's micro-batches: averaging them on the host
      needs no collective in the step. ``step(state, batch, **kwargs)``
      passes keyword arguments on to ``loss_fn`` as static values (one
      compiled program per value).
    shard_batch: this process's batch (leading axis the per-process batch
      size) -> the batch ``step`` takes.
    to_host: device tree -> one NumPy copy (gathered across devices and
      processes). Leaves that differ between devices keep a leading device
      axis (the accumulator of ``accumulate_gradients`` and the model state
      between its emitted steps), so a state taken mid-cycle holds every
      device's part. Call it on every process. Under ``pmap``, a tree other
      than a whole :class:`TrainState` is read from the first device.
    from_host: ``from_host(host_state) -> TrainState`` placed exactly as
      ``init`` places it, from ``to_host(state)`` (e.g. a restored
      checkpoint): the step continues where that state left off, mid-cycle
      too, without tracing again.
    abstract_state: ``abstract_state(params, model_state=None) ->
      TrainState`` of ``jax.ShapeDtypeStruct`` with the shardings ``init``
      gives, without allocating it: the target to restore a checkpoint of
      the sharded state into (e.g. ``orbax.checkpoint`` ``StandardRestore``).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import nag_optax
    >>> from nag_optax import parallel
    >>> dp = parallel.jit_data_parallel(
    ...     lambda params, batch: jnp.sum(params["w"] * batch),
    ...     nag_optax.nesterov(0.1, 0.9), parallel.data_mesh(jax.devices()[:1]))
    >>> isinstance(dp, parallel.DataParallel)
    True
    >>> abstract = dp.abstract_state({"w": jnp.zeros(3)})
    >>> abstract.params["w"].shape, abstract.params["w"].dtype
    ((3,), dtype('float32'))
  """

  init: StateFn
  step: Step
  shard_batch: Callable[[Any], Any]
  to_host: ToHost
  from_host: Callable[[TrainState], TrainState]
  abstract_state: StateFn


# --------------------------------------------------------------------------
# Checks made when a path is built.


def check_not_donated(state: TrainState) -> None:
  """Raises a ValueError if ``state`` holds arrays an earlier step consumed.

  A step donates its input state (its buffers become the output's), so the
  state passed to one call cannot be passed to another: use the state that
  call returned. Running the step on deleted buffers would fail inside the
  runtime, or crash the process.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.Array) and leaf.is_deleted():
      raise ValueError(
        f"The state leaf at {jax.tree_util.keystr(path)} was donated to an "
        "earlier step and no longer exists: pass the state that step returned "
        "(state, metrics = dp.step(state, batch)), or build the DataParallel "
        "with donate=False to keep inputs alive."
      )


def check_replicated_params(state: TrainState) -> None:
  """Raises a ValueError if a parameter is split across devices: on a mesh
  the step keeps the parameters whole on every device, and a state with a
  leading device axis (``pmap_data_parallel``'s) would be read as parameters
  of another shape."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    if (
      isinstance(leaf, jax.Array)
      and len(leaf.sharding.device_set) > 1
      and not leaf.is_fully_replicated
    ):
      raise ValueError(
        f"The parameter at {jax.tree_util.keystr(path)} (shape {leaf.shape}) "
        "is split across devices, but this step keeps parameters replicated: "
        "was the state made by another builder (pmap_data_parallel's has a "
        "leading device axis)? Move it with dp.from_host(other.to_host(state))."
      )


def check_micro_batches(micro_batches: object) -> int:
  if (
    isinstance(micro_batches, bool)
    or not isinstance(micro_batches, int)
    or micro_batches < 1
  ):
    raise ValueError(
      "micro_batches must be a positive integer (the number of micro-batches "
      f"one step's batch is split into), got {micro_batches!r}."
    )
  return micro_batches


def accumulates(
  optimizer: optax.GradientTransformation,
) -> TypeGuard[_accumulation.AccumulateGradients]:
  """Whether ``optimizer`` is an ``accumulate_gradients`` transformation."""
  return isinstance(optimizer, _accumulation.AccumulateGradients)


def check_reduce_dtype(reduce_dtype: object) -> jnp.dtype | None:
  """``reduce_dtype`` as a floating-point dtype, or None (the default rule).

  Raises:
    ValueError: naming ``reduce_dtype``, for anything that is not a real
      floating-point dtype.
  """
  if reduce_dtype is None:
    return None
  try:
    dtype = jnp.dtype(reduce_dtype)  # type: ignore[call-overload]
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      "reduce_dtype must be a floating-point dtype (e.g. jnp.bfloat16 to halve "
      "the gradient traffic) or None (float32, or the gradient's dtype if "
      f"wider), got {reduce_dtype!r}."
    )
  return dtype


def state_kinds(
  state: TrainState,
  optimizer: optax.GradientTransformation,
  opt_state_kind: Callable[[optax.OptState], Any],
) -> TrainState:
  """The kind of every leaf of a TrainState: which leaves are device-local.

  ``opt_state_kind(tree)`` gives the kinds of the optimizer state that is
  not device-local (:data:`REPLICATED`, or ZeRO-1 specs).
  """
  params = jax.tree.map(lambda _: REPLICATED, state.params)
  if not accumulates(optimizer):
    return TrainState(
      params,
      opt_state_kind(state.opt_state),
      jax.tree.map(lambda _: REPLICATED, state.model_state),
    )
  local = lambda tree: jax.tree.map(lambda _: LOCAL, tree)
  opt = cast(_accumulation.AccumulateGradientsState, state.opt_state)
  opt_kinds = jax.tree.map(lambda _: REPLICATED, opt)._replace(
    inner_opt_state=opt_state_kind(opt.inner_opt_state),
    acc_grads=local(opt.acc_grads),
    skip_state=local(opt.skip_state),
  )
  return TrainState(params, opt_kinds, local(state.model_state))


# --------------------------------------------------------------------------
# Per device: the micro-batch loop.


def _loss_with_state(
  loss_fn: LossFn,
  has_aux: bool,
  with_state: bool,
  static: dict[str, Hashable],
  axis_name: str | None,
) -> Callable[..., tuple[jax.Array, tuple[optax.Params | None, Any]]]:
  """``fn(params, batch, model_state) -> (loss, (new_model_state, aux))``,
  with the step's static keyword arguments passed on to ``loss_fn``."""

  def call(*args):
    try:
      return loss_fn(*args, **static)
    except NameError as error:
      if "unbound axis name" not in str(error) or axis_name is None:
        raise
      raise ValueError(
        f"loss_fn uses a collective over an axis this step does not map: "
        f"{error} The step maps the devices over the axis {axis_name!r}: use "
        f"that name in loss_fn (e.g. BatchNorm(axis_name={axis_name!r}))."
      ) from error

  def fn(params, batch, model_state):
    if not with_state:
      out = call(params, batch)
      if has_aux != isinstance(out, tuple):
        raise ValueError(_aux_mismatch(out, has_aux))
      loss, aux = out if has_aux else (out, None)
      return loss, (None, aux)
    out = call(params, batch, model_state)
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(
        "With model_state, loss_fn(params, batch, model_state) must return "
        "(loss, new_model_state), or (loss, (new_model_state, aux)) with "
        "has_aux=True."
      )
    loss, rest = out
    new_state, aux = rest if has_aux else (rest, None)
    # jaxlib ships no stub for its C++ PyTreeDef: mypy cannot see its __eq__.
    if jax.tree.structure(new_state) != jax.tree.structure(model_state):  # type: ignore[operator]
      raise ValueError(
        "loss_fn must return a new model_state with the structure of the one "
        f"it was given: got {jax.tree.structure(new_state)}, expected "
        f"{jax.tree.structure(model_state)}."
      )
    return loss, (optax.tree.cast_like(new_state, model_state), aux)

  return fn


def _aux_mismatch(out: Any, has_aux: bool) -> str:
  if has_aux:
    return (
      "has_aux=True but loss_fn(params, batch) returned a single "
      f"{type(out).__name__}, not (loss, aux): return both, or build the step "
      "with has_aux=False."
    )
  return (
    f"loss_fn(params, batch) returned a tuple of {len(out)}: if it is "
    "(loss, aux), build the step with has_aux=True; the loss must be a scalar."
  )


def split_micro_batches(batch: Any, micro_batches: int) -> Any:
  """``(b, ...)`` leaves -> ``(micro_batches, b / micro_batches, ...)``.

  Raises:
    ValueError: naming ``micro_batches`` and the sizes, when a leaf's
      leading (per-device batch) dimension does not split into equal parts.
  """

  def split(path, x):
    if x.ndim == 0 or x.shape[0] % micro_batches:
      raise ValueError(
        f"micro_batches={micro_batches} must divide the per-device batch: the "
        f"batch leaf at {jax.tree_util.keystr(path)} has {x.shape[0] if x.ndim else 0}"
        f" rows on each device (shape {x.shape} there). Use a batch size that "
        "is a multiple of micro_batches times the number of devices."
      )
    return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

  return jax.tree_util.tree_map_with_path(split, batch)


def local_gradients(
  loss_fn: LossFn,
  params: optax.Params,
  batch: Any,
  model_state: optax.Params | None,
  *,
  has_aux: bool,
  micro_batches: int,
  static: dict[str, Hashable] | None = None,
  axis_name: str | None = None,
) -> tuple[optax.Updates, jax.Array, Any, optax.Params | None]:
  r"""One device's gradient, averaged over ``micro_batches`` slices of ``batch``.

  The device's batch is split into ``micro_batches`` equal consecutive
  slices :math:`B_1, \dots, B_k`; a ``lax.scan`` takes the gradient on each
  (``loss_fn`` is traced once) and sums it in float32 (or the gradient's
  wider dtype), threading the model state from slice to slice:

  .. math::

    g = \frac{1}{k} \sum_{i=1}^{k} \nabla_\theta \ell(\theta; B_i, s_{i-1}),
    \qquad s_i = \mathrm{new\_model\_state}(\theta; B_i, s_{i-1})

  No collective of the package runs here (``loss_fn``'s own, such as
  BatchNorm statistics over the mapped axis, run per micro-batch). Keyword
  arguments in ``static`` reach ``loss_fn`` as static values.

  Returns:
    ``(grads, loss, aux, model_state)``: the mean gradient in float32 or
    wider, the mean loss and the mean of each ``aux`` leaf over the slices,
    and the model state after the last slice.
  """
  with_state = model_state is not None
  # Inside shard_map the gradient with respect to a replicated (invariant)
  # parameter would arrive already summed over devices: make the parameters
  # (and the scan's carries) vary like the batch, so that everything stays
  # this device's own.
  batch_axes = frozenset().union(*map(_vma.varying_axes, jax.tree.leaves(batch)))
  vary = lambda tree: jax.tree.map(lambda x: _vma.vary(x, batch_axes), tree)
  params, model_state = vary(params), vary(model_state)
  value_and_grad = jax.value_and_grad(
    _loss_with_state(loss_fn, has_aux, with_state, static or {}, axis_name),
    has_aux=True,
  )
  if micro_batches == 1:
    (loss, (model_state, aux)), grads = value_and_grad(params, batch, model_state)
    return _precision.upcast(grads), loss, aux, model_state

  def body(carry, micro_batch):
    grad_sum, model_state = carry
    (loss, (model_state, aux)), grads = value_and_grad(params, micro_batch, model_state)
    grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), grad_sum, grads)
    return (grad_sum, model_state), (loss, aux)

  zeros = vary(_precision.upcast(optax.tree.zeros_like(params)))
  (grad_sum, model_state), (losses, auxes) = jax.lax.scan(
    body, (zeros, model_state), split_micro_batches(batch, micro_batches)
  )
  mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
  grads = jax.tree.map(lambda s: s / micro_batches, grad_sum)
  return grads, mean(losses), mean(auxes), model_state


# --------------------------------------------------------------------------
# Across devices: the one reduction and the one model-state rule.


def mean_gradients(
  grads: optax.Updates,
  axis_name: str,
  kinds: Any = REPLICATED,
  reduce_dtype: jnp.dtype | None = None,
) -> optax.Updates:
  """The mean of per-device gradients across ``axis_name``, once.

  Where ``kinds`` gives a leaf a ZeRO-1 ``PartitionSpec``, the leaf is
  reduce-scattered (``lax.psum_scatter`` along the sharded dimension, then
  divided by the axis size) to the device's shard; elsewhere all-reduced
  (``lax.pmean``). The reduction runs in ``reduce_dtype`` when one is given
  (e.g. bfloat16: half the traffic, the sum rounded to 8 bits of mantissa)
  and the result comes back in the gradient's dtype; by default it runs in
  the gradient's own dtype (float32 or wider, see :func:`local_gradients`).
  """
  n = jax.lax.axis_size(axis_name)

  def reduce(g, kind):
    x = g if reduce_dtype is None else g.astype(reduce_dtype)
    if kind == REPLICATED or axis_name not in tuple(kind):
      x = jax.lax.pmean(x, axis_name)
    else:
      dim = tuple(kind).index(axis_name)
      x = jax.lax.psum_scatter(x, axis_name, scatter_dimension=dim, tiled=True) / n
    return x.astype(g.dtype)

  if kinds == REPLICATED:
    kinds = jax.tree.map(lambda _: REPLICATED, grads)
  return jax.tree.map(reduce, grads, kinds, is_leaf=is_kind)


def sync_model_state(model_state: optax.Params, axis_name: str) -> optax.Params:
  """The one model-state rule: replicas made equal, once per optimizer step.

  Floating-point leaves (e.g. BatchNorm running statistics) are averaged
  across devices; integer and boolean leaves (counters, flags) take their
  maximum, which leaves equal replicas unchanged.
  """

  def sync(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jax.lax.pmean(x, axis_name)
    if x.dtype == jnp.bool_:
      return jax.lax.pmax(x.astype(jnp.int32), axis_name) > 0
    return jax.lax.pmax(x, axis_name)

  return jax.tree.map(sync, model_state)


def is_kind(x: object) -> bool:
  """Whether ``x`` is a leaf of a kinds tree (a kind name or a spec)."""
  return isinstance(x, (str, jax.sharding.PartitionSpec))


def _metrics(loss: jax.Array, aux: Any) -> dict[str, Any]:
  return {"loss": loss} if aux is None else {"loss": loss, "aux": aux}


# --------------------------------------------------------------------------
# The step.


def make_train_step(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  *,
  axis_name: str,
  mapped: Callable[..., Callable[..., Any]],
  has_aux: bool,
  micro_batches: int,
  reduce_dtype: jnp.dtype | None = None,
  gradient_kinds: Callable[[optax.Params], Any] = lambda grads: REPLICATED,
  constrain: Callable[[optax.Params, Any], optax.Params] = lambda tree, kinds: tree,
) -> Callable[..., tuple[TrainState, Any]]:
  r"""``step(state, batch, **static) -> (state, metrics)``, the same on every path.

  Without ``accumulate_gradients`` (``micro_batches`` slices of one batch):

  .. math::

    g = \mathrm{mean}_{\mathrm{devices}}\, \mathrm{mean}_{i \le k}\,
    \nabla_\theta \ell(\theta; B_{d,i}), \qquad
    u, s \leftarrow \mathrm{optimizer.update}(g, s, \theta,
    \mathrm{value}=\bar\ell), \qquad \theta \leftarrow \theta + u

  with one reduction of :math:`g` (all-reduce, or reduce-scatter to ZeRO-1
  shards as ``gradient_kinds`` says), and the model state synced once
  (:func:`sync_model_state`). With an ``accumulate_gradients`` optimizer,
  each call accumulates its gradient device-locally
  (``optimizer.accumulate``) and only the emitting call reduces, updates
  (``optimizer.emit``), applies and syncs, inside the true branch of a
  ``lax.cond``: micro-steps neither communicate nor touch the parameters.

  Args:
    loss_fn: the user's loss, per device.
    optimizer: an optax optimizer.
    axis_name: the mapped axis the devices span.
    mapped: ``mapped(fn, in_kinds, out_kinds)`` runs ``fn`` per device.
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    micro_batches: slices of each device's batch per call.
    reduce_dtype: the dtype the gradient crosses devices in (None: float32,
      or the gradient's dtype if wider).
    gradient_kinds: the kinds of the reduced gradient, from the params tree.
    constrain: ``constrain(tree, kinds)`` pins a value's layout (on a mesh,
      ``with_sharding_constraint``): the emitting branch returns the
      parameters replicated, so that their ZeRO-1 all-gather runs inside it
      and not on every call.
  """
  tx = optax.with_extra_args_support(optimizer)  # without accumulate_gradients
  accumulator = optimizer if accumulates(optimizer) else None

  def step(state, batch, **static):
    grad_kinds = gradient_kinds(state.params)

    def gradients(params, batch, model_state):
      return local_gradients(
        loss_fn,
        params,
        batch,
        model_state,
        has_aux=has_aux,
        micro_batches=micro_batches,
        static=static,
        axis_name=axis_name,
      )

    if accumulator is None:

      def per_device(params, model_state, batch):
        grads, loss, aux, model_state = gradients(params, batch, model_state)
        grads = mean_gradients(grads, axis_name, grad_kinds, reduce_dtype)
        if model_state is not None:
          model_state = sync_model_state(model_state, axis_name)
        value = jax.lax.pmean(loss, axis_name)
        return grads, model_state, value, _metrics(loss, aux)

      grads, model_state, value, metrics = mapped(
        per_device,
        (REPLICATED, REPLICATED, BATCH),
        (grad_kinds, REPLICATED, REPLICATED, LOCAL),
      )(state.params, state.model_state, batch)
      updates, opt_state = tx.update(
        optax.tree.cast_like(grads, state.params),
        state.opt_state,
        state.params,
        value=value,
      )
      params = optax.apply_updates(state.params, updates)
      return TrainState(params, opt_state, model_state), metrics

    acc_state = state.opt_state._replace(inner_opt_state=())
    acc_kinds = jax.tree.map(lambda _: REPLICATED, acc_state)._replace(
      acc_grads=LOCAL, skip_state=LOCAL
    )

    def accumulate(params, acc_state, model_state, batch):
      grads, loss, aux, model_state = gradients(params, batch, model_state)
      acc_state, emitting = accumulator.accumulate(
        grads, acc_state, params, axis_name=axis_name
      )
      return acc_state, emitting, model_state, loss, _metrics(loss, aux)

    acc_state, emitting, model_state, loss, metrics = mapped(
      accumulate,
      (REPLICATED, acc_kinds, LOCAL, BATCH),
      (acc_kinds, REPLICATED, LOCAL, LOCAL, LOCAL),
    )(state.params, acc_state, state.model_state, batch)
    opt_state = acc_state._replace(inner_opt_state=state.opt_state.inner_opt_state)

    def reduce(acc_grads, model_state, loss):
      if model_state is not None:
        model_state = sync_model_state(model_state, axis_name)
      mean = mean_gradients(acc_grads, axis_name, grad_kinds, reduce_dtype)
      return mean, model_state, jax.lax.pmean(loss, axis_name)

    def on_emit(params, opt_state, model_state, loss):
      mean, model_state, value = mapped(
        reduce, (LOCAL, LOCAL, LOCAL), (grad_kinds, LOCAL, REPLICATED)
      )(opt_state.acc_grads, model_state, loss)
      updates, opt_state = accumulator.emit(
        optax.tree.cast_like(mean, params), opt_state, params, value=value
      )
      params = constrain(optax.apply_updates(params, updates), REPLICATED)
      return params, opt_state, model_state

    def on_micro(params, opt_state, model_state, loss):
      del loss
      return params, opt_state, model_state

    params, opt_state, model_state = jax.lax.cond(
      emitting, on_emit, on_micro, state.params, opt_state, model_state, loss
    )
    return TrainState(params, opt_state, model_state), metrics

  return step
