"""The ``jax.pmap`` path: every ``pmap``-specific line of the package."""

from collections.abc import Callable
from typing import Any
from typing import TypeVar
from typing import overload

import jax
import numpy as np
import optax

from nag_optax.parallel import _host
from nag_optax.parallel import _step

_Tree = TypeVar("_Tree")

_IDENTITY_PMAPS: dict[str, Callable[[Any], Any]] = {}


def _identity_pmap(axis_name: str) -> Callable[[Any], Any]:
  if axis_name not in _IDENTITY_PMAPS:
    _IDENTITY_PMAPS[axis_name] = jax.pmap(lambda x: x, axis_name=axis_name)
  return _IDENTITY_PMAPS[axis_name]


@overload
def replicate(tree: jax.typing.ArrayLike, *, axis_name: str = ...) -> jax.Array: ...


@overload
def replicate(tree: _Tree, *, axis_name: str = ...) -> _Tree: ...


def replicate(tree: Any, *, axis_name: str = "batch") -> Any:
  """Copies ``tree`` onto every local device, as ``jax.pmap`` places arrays.

  Placing through a ``pmap`` with the same ``axis_name`` as the training
  step gives the arrays the sharding that step's outputs have, so the step
  traces and compiles once (host arrays, or another axis name, would make it
  trace a second time). Works in multi-process runs (every process
  replicates its own copy).

  Args:
    tree: a pytree of arrays.
    axis_name: the axis name of the ``pmap`` that will consume the result.

  Returns:
    The tree with a leading axis of ``jax.local_device_count()``.
  """
  n = jax.local_device_count()
  stacked = jax.tree.map(
    lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree
  )
  return _identity_pmap(axis_name)(stacked)


def unreplicate(tree: _Tree) -> _Tree:
  """The first local replica of a ``pmap``-placed tree, without a gather.

  Reads ``addressable_shards[0]`` (indexing ``x[0]`` would gather the whole
  array across devices, and fails across processes).
  """

  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_shards[0].data[0]
    return np.asarray(x)[0]

  return jax.tree.map(first, tree)


def split_batch(batch: Any, num_devices: int | None = None) -> Any:
  """Reshapes a host batch ``(B, ...)`` to ``(num_devices, B / num_devices, ...)``.

  Args:
    batch: a pytree of arrays sharing the leading (batch) dimension.
    num_devices: defaults to ``jax.local_device_count()``.

  Returns:
    The batch with a leading device axis, for ``jax.pmap``.

  Raises:
    ValueError: if a leading dimension is not divisible by ``num_devices``.
  """
  n = jax.local_device_count() if num_devices is None else num_devices

  def split(path, x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim == 0 or x.shape[0] % n:
      raise ValueError(
        f"The batch leaf at {jax.tree_util.keystr(path)} has shape {x.shape}: "
        f"its leading (batch) dimension must be divisible by the {n} local "
        "devices. Use a per-process batch size that is a multiple of "
        "jax.local_device_count()."
      )
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])

  return jax.tree_util.tree_map_with_path(split, batch)


def pmap_data_parallel(
  loss_fn: _step.LossFn,
  optimizer: optax.GradientTransformation,
  *,
  axis_name: str = "batch",
  micro_batches: int = 1,
  reduce_gradients: bool = True,
  has_aux: bool = False,
  donate: bool = True,
) -> _step.DataParallel:
  r"""A ``jax.pmap`` data-parallel training step over the local devices.

  Each device runs ``loss_fn`` on its slice of the batch (split into
  ``micro_batches`` micro-batches, a ``lax.scan`` inside the step); the
  gradients are averaged across devices (all processes' devices in a
  multi-process run) once per optimizer step, the optimizer updates the
  replicated parameters and all replicas stay identical:

  .. math::

    g = \frac{1}{n k} \sum_{d=1}^{n} \sum_{i=1}^{k}
    \nabla_\theta \ell(\theta; B_{d,i})

  which equals the gradient on the full batch for a mean loss and equal
  slices. Pass ``nag_optax.accumulate_gradients(optimizer, k)`` to
  accumulate across calls instead: micro-steps then communicate nothing and
  leave the parameters alone. Model state follows the one rule of
  :mod:`nag_optax.parallel` (synced once per optimizer step). The
  optimizer state is replicated (use a mesh path for ZeRO-1).

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``); with model state ``loss_fn(params, batch, model_state) ->
      (loss, new_model_state)`` (or ``(loss, (new_model_state, aux))``).
    optimizer: an optax optimizer, or ``nag_optax.accumulate_gradients(...)``
      (outermost, with the rest inside it).
    axis_name: the ``pmap`` axis name (pass it to Flax ``BatchNorm`` for
      statistics over the global batch).
    micro_batches: micro-batches per step (see :func:`jit_data_parallel`).
    reduce_gradients: must be True unless ``optimizer`` is
      ``accumulate_gradients(...)`` itself (accepted for code written
      against earlier versions; the step always reduces once per optimizer
      step).
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    donate: donate the input state to the step (saves memory).

  Returns:
    A :class:`DataParallel`.
  """
  micro_batches = _step.check_micro_batches(micro_batches)
  _step.check_reduce_gradients(reduce_gradients, optimizer)

  def kinds_of(state):
    return _step.state_kinds(
      state, optimizer, lambda tree: jax.tree.map(lambda _: _step.REPLICATED, tree)
    )

  def init(params, model_state=None):
    params = replicate(params, axis_name=axis_name)
    opt_state = jax.pmap(optimizer.init, axis_name=axis_name)(params)
    if model_state is not None:
      model_state = replicate(model_state, axis_name=axis_name)
    return _step.TrainState(params, opt_state, model_state)

  def to_host(tree):
    """First replicas, but every local device's row of device-local leaves."""
    if not isinstance(tree, _step.TrainState):
      return jax.tree.map(np.asarray, unreplicate(tree))
    devices = jax.local_devices()

    def get(x, kind):
      if kind != _step.LOCAL:
        return np.asarray(unreplicate(x))
      shards = sorted(x.addressable_shards, key=lambda s: devices.index(s.device))
      return np.concatenate([np.asarray(s.data) for s in shards])

    return jax.tree.map(get, tree, kinds_of(tree))

  def from_host(host_state):
    n = jax.local_device_count()
    kinds = kinds_of(host_state) if isinstance(host_state, _step.TrainState) else None
    _host.check_host_state(host_state, kinds, n)
    stacked = jax.tree.map(
      lambda x, kind: (
        np.asarray(x)
        if kind == _step.LOCAL
        else np.broadcast_to(np.asarray(x), (n, *np.shape(x)))
      ),
      host_state,
      kinds,
    )
    return _identity_pmap(axis_name)(stacked)

  def abstract_state(params, model_state=None):
    n = jax.local_device_count()
    sharding = replicate(np.zeros(1), axis_name=axis_name).sharding
    shapes = jax.eval_shape(
      lambda p, s: _step.TrainState(p, optimizer.init(p), s), params, model_state
    )
    return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct((n, *s.shape), s.dtype, sharding=sharding),
      shapes,
    )

  step = _step.make_train_step(
    loss_fn,
    optimizer,
    axis_name=axis_name,
    mapped=lambda fn, in_kinds, out_kinds: fn,  # pmap: already per device
    has_aux=has_aux,
    micro_batches=micro_batches,
  )
  return _step.DataParallel(
    init=init,
    step=jax.pmap(step, axis_name=axis_name, donate_argnums=(0,) if donate else ()),
    shard_batch=split_batch,
    to_host=to_host,
    from_host=from_host,
    abstract_state=abstract_state,
  )
