"""The ``jax.pmap`` path: every ``pmap``-specific line of the package."""

import functools
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Sequence
from typing import Any
from typing import TypeVar
from typing import overload

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nag_optax.parallel import _host
from nag_optax.parallel import _step

_Tree = TypeVar("_Tree")

_IDENTITY_PMAPS: dict[Hashable, Callable[[Any], Any]] = {}


def _identity_pmap(
  axis_name: str, devices: Sequence[jax.Device] | None = None
) -> Callable[[Any], Any]:
  key = (axis_name, None if devices is None else tuple(devices))
  if key not in _IDENTITY_PMAPS:
    _IDENTITY_PMAPS[key] = jax.pmap(lambda x: x, axis_name=axis_name, devices=devices)
  return _IDENTITY_PMAPS[key]


def _place_stacked(
  tree: Any, axis_name: str, devices: Sequence[jax.Device] | None
) -> Any:
  """Host arrays with a leading device axis -> pmap-placed arrays."""
  return _identity_pmap(axis_name, devices)(tree)


def _stack(tree: Any, n: int) -> Any:
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)


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

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nag_optax import parallel
    >>> tree = parallel.replicate({"w": jnp.zeros(3)})
    >>> tree["w"].shape == (jax.local_device_count(), 3)
    True
  """
  return _place_stacked(_stack(tree, jax.local_device_count()), axis_name, None)


def unreplicate(tree: _Tree) -> _Tree:
  """The first local replica of a ``pmap``-placed tree, without a gather.

  Reads ``addressable_shards[0]`` (indexing ``x[0]`` would gather the whole
  array across devices, and fails across processes).

  Args:
    tree: a pytree of arrays with a leading device axis, as
      :func:`replicate` or a ``jax.pmap`` step returns them.

  Returns:
    The tree without the device axis: the first local device's copy.

  Example:
    >>> import jax.numpy as jnp
    >>> from nag_optax import parallel
    >>> tree = parallel.replicate({"w": jnp.arange(3.0)})
    >>> parallel.unreplicate(tree)
    {'w': Array([0., 1., 2.], dtype=float32)}
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

  Example:
    >>> import numpy as np
    >>> from nag_optax import parallel
    >>> batch = parallel.split_batch({"x": np.ones((8, 3))}, num_devices=2)
    >>> batch["x"].shape
    (2, 4, 3)
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


def _check_devices(devices: Sequence[jax.Device] | None) -> list[jax.Device] | None:
  if devices is None:
    return None
  devices = list(devices)
  if not devices:
    raise ValueError(
      "devices is empty: pmap_data_parallel needs at least one device (were "
      "the devices filtered for a platform this machine does not have?)."
    )
  return devices


class _PmapPerStatic:
  """``step(state, batch, **static)``: one ``jax.pmap`` of ``step`` per set of
  static keyword values; ``step.lower`` lowers it."""

  def __init__(self, step, *, axis_name, devices, donate):
    self._step = step
    self._options = dict(
      axis_name=axis_name, devices=devices, donate_argnums=(0,) if donate else ()
    )
    self._pmapped: dict[tuple[tuple[str, Hashable], ...], Any] = {}

  def _pmap(self, static: dict[str, Hashable]) -> Any:
    key = tuple(sorted(static.items()))
    if key not in self._pmapped:
      self._pmapped[key] = jax.pmap(
        functools.partial(self._step, **static), **self._options
      )
    return self._pmapped[key]

  def __call__(self, state, batch, **static):
    _step.check_not_donated(state)
    return self._pmap(static)(state, batch)

  def lower(self, state, batch, **static):
    return self._pmap(static).lower(state, batch)


def pmap_data_parallel(
  loss_fn: _step.LossFn,
  optimizer: optax.GradientTransformation,
  *,
  axis_name: str = "batch",
  devices: Sequence[jax.Device] | None = None,
  micro_batches: int = 1,
  has_aux: bool = False,
  reduce_dtype: jax.typing.DTypeLike | None = None,
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
  optimizer state is replicated (use a mesh path for ZeRO-1). The gradient
  crosses devices in float32 (or its dtype if wider) unless
  ``reduce_dtype`` says otherwise. Keyword arguments of ``step`` reach
  ``loss_fn`` as static values (one compilation per distinct value).

  ``init``, ``shard_batch``, ``from_host`` and ``to_host`` place data on
  the local devices; ``abstract_state`` and ``step.lower`` need none, so
  with ``devices`` from
  ``jax.experimental.topologies.get_topology_desc(...).devices`` the step
  compiles for a TPU slice or GPUs that this machine does not have.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``); with model state ``loss_fn(params, batch, model_state) ->
      (loss, new_model_state)`` (or ``(loss, (new_model_state, aux))``).
    optimizer: an optax optimizer, or ``nag_optax.accumulate_gradients(...)``
      (outermost, with the rest inside it).
    axis_name: the ``pmap`` axis name (pass it to Flax ``BatchNorm`` for
      statistics over the global batch).
    devices: the devices to map over (default: ``jax.local_devices()``);
      compile-only devices of a named topology work for ``abstract_state``
      and ``step.lower``.
    micro_batches: micro-batches per step (see :func:`jit_data_parallel`).
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    reduce_dtype: the dtype of the one gradient reduction (None: float32, or
      the gradient's dtype if wider).
    donate: donate the input state to the step (saves memory).

  Returns:
    A :class:`DataParallel`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import nag_optax
    >>> from nag_optax import parallel
    >>> def loss_fn(params, batch):
    ...   x, y = batch
    ...   return jnp.mean((x @ params["w"] - y) ** 2)
    >>> dp = parallel.pmap_data_parallel(
    ...     loss_fn, nag_optax.nesterov(0.1, 0.9), devices=jax.local_devices()[:1])
    >>> state = dp.init({"w": jnp.zeros((3, 1))})
    >>> batch = (np.ones((4, 3), np.float32), np.ones((4, 1), np.float32))
    >>> state, metrics = dp.step(state, dp.shard_batch(batch))
    >>> dp.to_host(state.params)["w"].ravel()
    array([0.38, 0.38, 0.38], dtype=float32)
  """
  micro_batches = _step.check_micro_batches(micro_batches)
  reduce_dtype = _step.check_reduce_dtype(reduce_dtype)
  devices = _check_devices(devices)
  target = jax.local_devices() if devices is None else devices

  def kinds_of(state):
    return _step.state_kinds(
      state, optimizer, lambda tree: jax.tree.map(lambda _: _step.REPLICATED, tree)
    )

  def init(params, model_state=None):
    params, model_state = _place_stacked(
      _stack((params, model_state), len(target)), axis_name, devices
    )
    opt_state = jax.pmap(optimizer.init, axis_name=axis_name, devices=devices)(params)
    return _step.TrainState(params, opt_state, model_state)

  def to_host(tree):
    """First replicas, but every local device's row of device-local leaves."""
    if not isinstance(tree, _step.TrainState):
      return jax.tree.map(np.asarray, unreplicate(tree))

    def get(x, kind):
      if kind != _step.LOCAL:
        return np.asarray(unreplicate(x))
      shards = sorted(x.addressable_shards, key=lambda s: target.index(s.device))
      return np.concatenate([np.asarray(s.data) for s in shards])

    return jax.tree.map(get, tree, kinds_of(tree))

  def from_host(host_state):
    n = len(target)
    kinds = kinds_of(host_state) if isinstance(host_state, _step.TrainState) else None
    _host.check_host_state(host_state, kinds, n)
    stacked = jax.tree.map(
      lambda x, kind: np.asarray(x) if kind == _step.LOCAL else _stack(x, n),
      host_state,
      kinds,
    )
    return _place_stacked(stacked, axis_name, devices)

  def abstract_state(params, model_state=None):
    n = len(target)
    # What pmap's outputs carry: the leading axis split over the devices.
    sharding = NamedSharding(Mesh(np.asarray(target), (axis_name,)), P(axis_name))
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
    reduce_dtype=reduce_dtype,
  )
  return _step.DataParallel(
    init=init,
    step=_PmapPerStatic(step, axis_name=axis_name, devices=devices, donate=donate),
    shard_batch=lambda batch: split_batch(batch, len(target)),
    to_host=to_host,
    from_host=from_host,
    abstract_state=abstract_state,
  )
