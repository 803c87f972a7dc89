"""The mesh paths: ``jax.jit`` over a one-axis mesh, per-device work in
``jax.shard_map``, ZeRO-1 optimizer state by sharding annotations."""

import functools
from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Iterable
from typing import Any
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from nag_optax.parallel import _host
from nag_optax.parallel import _step

_Tree = TypeVar("_Tree")


def data_mesh(
  devices: Iterable[jax.Device] | None = None, *, axis_name: str = "data"
) -> jax.sharding.Mesh:
  """A one-axis mesh over ``devices`` (default: all devices, all processes).

  The axis type is ``Auto``: the compiler propagates shardings and inserts
  the collectives (``jax.make_mesh`` now defaults to ``Explicit``).

  Args:
    devices: the devices along the axis, in order (default: ``jax.devices()``,
      those of every process).
    axis_name: the name of the mesh's one axis.

  Returns:
    A ``jax.sharding.Mesh`` with one axis, ``axis_name``.

  Example:
    >>> import jax
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> mesh.axis_names, mesh.size
    (('data',), 1)
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError(
      "data_mesh got no devices: pass at least one (were the devices "
      "filtered for a platform this machine does not have? jax.devices() "
      f"here: {jax.devices()[:4]}...)."
    )
  return jax.sharding.Mesh(
    np.asarray(devices), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def _data_axis(mesh: jax.sharding.Mesh) -> str:
  if mesh.size == 0:
    raise ValueError("The mesh has no devices; see parallel.data_mesh.")
  if len(mesh.axis_names) != 1:
    raise ValueError(
      "The data-parallel paths need a one-axis (data) mesh, got axes "
      f"{mesh.axis_names}; see parallel.data_mesh."
    )
  return mesh.axis_names[0]


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the mesh's data axis.

  Args:
    mesh: a one-axis mesh (:func:`data_mesh`).

  Returns:
    A ``NamedSharding`` that splits the leading dimension of an array over
    the mesh's axis and replicates the others.

  Example:
    >>> import jax
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> tuple(parallel.batch_sharding(mesh).spec)
    ('data',)
  """
  return NamedSharding(mesh, PartitionSpec(_data_axis(mesh)))


def global_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's batch -> global arrays sharded over the data axis.

  In a single process this places the batch; with several processes each
  passes its own (same-sized) batch and the global batch is their
  concatenation in process order (``jax.make_array_from_process_local_data``).

  Args:
    batch: a pytree of this process's arrays (NumPy or JAX) sharing the
      leading (batch) dimension.
    mesh: a one-axis mesh (:func:`data_mesh`).

  Returns:
    The same tree of global ``jax.Array`` sharded with
    :func:`batch_sharding`; the leading dimension is the sum over processes.

  Raises:
    ValueError: if a leading dimension is not divisible by the number of
      this process's devices in the mesh.

  Example:
    >>> import jax
    >>> import numpy as np
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> batch = parallel.global_batch({"x": np.ones((4, 3), np.float32)}, mesh)
    >>> batch["x"].shape, tuple(batch["x"].sharding.spec)
    ((4, 3), ('data',))
  """
  sharding = batch_sharding(mesh)
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

  def place(path, x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local:
      raise ValueError(
        f"The batch leaf at {jax.tree_util.keystr(path)} has shape {x.shape}: "
        f"its leading (batch) dimension must be divisible by this process's "
        f"{local} devices in the mesh."
      )
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(place, batch)


def _zero1_spec(shape: tuple[int, ...], axis: str, n: int) -> PartitionSpec:
  """The data axis on the first dimension it divides, else replicated."""
  spec: list[str | None] = [None] * len(shape)
  for i, size in enumerate(shape):
    if size >= n and size % n == 0:
      spec[i] = axis
      break
  return PartitionSpec(*spec)


def _zero1_specs(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  axis = _data_axis(mesh)
  n = mesh.shape[axis]
  return jax.tree.map(lambda x: _zero1_spec(np.shape(x), axis, n), tree)


def zero1_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """ZeRO-1 shardings: each array split over the data axis along one dimension.

  Each leaf is split along its first dimension divisible by the size of the
  data axis; scalars and leaves with no such dimension are replicated.

  Args:
    tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g.
      ``jax.eval_shape(optimizer.init, params)``).
    mesh: a one-axis mesh (:func:`data_mesh`).

  Returns:
    A matching tree of ``NamedSharding``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nag_optax import parallel
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> tree = {"m": jax.ShapeDtypeStruct((4, 3), jnp.float32),
    ...         "count": jax.ShapeDtypeStruct((), jnp.int32)}
    >>> shardings = parallel.zero1_shardings(tree, mesh)
    >>> tuple(shardings["m"].spec), tuple(shardings["count"].spec)
    (('data', None), ())
  """
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    _zero1_specs(tree, mesh),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def _spec(kind: _step.Kind, axis: str) -> PartitionSpec:
  if isinstance(kind, PartitionSpec):
    return kind
  return PartitionSpec(axis) if kind in (_step.LOCAL, _step.BATCH) else PartitionSpec()


def _specs(kinds: Any, axis: str) -> Any:
  return jax.tree.map(lambda k: _spec(k, axis), kinds, is_leaf=_step.is_kind)


def _shardings(mesh: jax.sharding.Mesh, kinds: Any) -> Any:
  axis = _data_axis(mesh)
  return jax.tree.map(
    lambda kind: NamedSharding(mesh, _spec(kind, axis)), kinds, is_leaf=_step.is_kind
  )


def _map_local(kinds: Any, tree: _Tree, fn: Callable[[jax.Array], jax.Array]) -> _Tree:
  """``fn`` applied to every leaf under a :data:`LOCAL` kind (a prefix tree)."""

  def apply(kind, subtree):
    return jax.tree.map(fn, subtree) if kind == _step.LOCAL else subtree

  return jax.tree.map(apply, kinds, tree, is_leaf=_step.is_kind)


def _mapped(mesh: jax.sharding.Mesh, axis: str) -> Callable[..., Callable[..., Any]]:
  """``mapped`` for the shared step: a ``jax.shard_map`` region.

  Device-local values enter with their leading device axis removed and
  leave with it restored, so that outside the region they are stored as one
  row per device, sharded over the data axis.
  """

  def mapped(fn, in_kinds, out_kinds):
    def body(*args):
      args = _map_local(in_kinds, args, lambda x: x[0])
      return _map_local(out_kinds, fn(*args), lambda x: jnp.asarray(x)[None])

    return jax.shard_map(
      body,
      mesh=mesh,
      in_specs=_specs(in_kinds, axis),
      out_specs=_specs(out_kinds, axis),
      # The region takes gradients inside, of values that are this device's
      # own: no varying-axes types are needed, and JAX 0.12's check rejects
      # the derivative of erf (exact GELU) of a varying value.
      check_vma=False,
    )

  return mapped


class _Placement(NamedTuple):
  """Where every leaf of a TrainState lives, and the functions that put it
  there: ``init``, ``abstract_state``, ``from_host`` of a DataParallel."""

  shardings_of: Callable[[_step.TrainState], _step.TrainState]
  init: _step.StateFn
  abstract_state: _step.StateFn
  from_host: Callable[[_step.TrainState], _step.TrainState]


def _placement(
  mesh: jax.sharding.Mesh,
  optimizer: optax.GradientTransformation,
  kinds_of: Callable[[_step.TrainState], _step.TrainState],
) -> _Placement:
  """Placement of the states of ``optimizer`` by ``kinds_of(state)``:
  device-local leaves stored with a leading device axis, ZeRO-1 leaves split
  by their specs, the rest replicated."""
  axis = _data_axis(mesh)
  n = mesh.shape[axis]

  def shardings_of(state):
    return _shardings(mesh, kinds_of(state))

  def make_state(params, model_state):
    state = _step.TrainState(params, optimizer.init(params), model_state)
    return _map_local(
      kinds_of(state), state, lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x)))
    )

  def abstract_state(params, model_state=None):
    shapes = jax.eval_shape(make_state, params, model_state)
    return jax.tree.map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes,
      shardings_of(shapes),
    )

  def init(params, model_state=None):
    replicated = NamedSharding(mesh, PartitionSpec())
    params, model_state = _host.place(
      (params, model_state),
      jax.tree.map(lambda _: replicated, (params, model_state)),
    )
    shardings = shardings_of(jax.eval_shape(make_state, params, model_state))
    return jax.jit(make_state, out_shardings=shardings)(params, model_state)

  def from_host(host_state):
    kinds = kinds_of(host_state) if isinstance(host_state, _step.TrainState) else None
    _host.check_host_state(host_state, kinds, n)
    return _host.place(host_state, shardings_of(host_state))

  return _Placement(shardings_of, init, abstract_state, from_host)


def _opt_state_kind(
  mesh: jax.sharding.Mesh, zero1: bool
) -> Callable[[optax.OptState], Any]:
  """The kinds of an optimizer state that is not device-local."""
  if zero1:
    return lambda tree: _zero1_specs(tree, mesh)
  return lambda tree: jax.tree.map(lambda _: _step.REPLICATED, tree)


class _CompiledPerStructure:
  """A ``step(state, batch, **static_kwargs)`` that compiles
  ``compile_for(state, static_kwargs)`` once per state structure (the
  shardings depend on it) and per keyword values; ``step.lower`` lowers it."""

  def __init__(
    self,
    compile_for: Callable[[_step.TrainState, dict[str, Hashable]], jax.stages.Wrapped],
  ):
    self._compile_for = compile_for
    self._compiled: dict[Hashable, jax.stages.Wrapped] = {}

  def _jitted(
    self, state: _step.TrainState, kwargs: dict[str, Hashable]
  ) -> jax.stages.Wrapped:
    key = (jax.tree.structure(state), tuple(sorted(kwargs.items())))
    if key not in self._compiled:
      self._compiled[key] = self._compile_for(state, kwargs)
    return self._compiled[key]

  def __call__(
    self, state: _step.TrainState, batch: Any, **kwargs: Hashable
  ) -> tuple[_step.TrainState, Any]:
    _step.check_not_donated(state)
    _step.check_replicated_params(state)
    return self._jitted(state, kwargs)(state, batch)

  def lower(
    self, state: _step.TrainState, batch: Any, **kwargs: Hashable
  ) -> jax.stages.Lowered:
    return self._jitted(state, kwargs).lower(state, batch)


def jit_data_parallel(
  loss_fn: _step.LossFn,
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh | None = None,
  *,
  micro_batches: int = 1,
  zero1: bool = False,
  has_aux: bool = False,
  reduce_dtype: jax.typing.DTypeLike | None = None,
  donate: bool = True,
) -> _step.DataParallel:
  r"""A ``jax.jit`` data-parallel step over a mesh with one data axis.

  The batch is sharded over the data axis and the parameters replicated.
  Each device runs ``loss_fn`` on its slice of the batch (split into
  ``micro_batches`` micro-batches, a ``lax.scan`` inside the compiled step)
  in a ``jax.shard_map`` region, so the gradient stays device-local until
  one reduction per optimizer step averages it:

  .. math::

    g = \frac{1}{n k} \sum_{d=1}^{n} \sum_{i=1}^{k}
    \nabla_\theta \ell(\theta; B_{d,i})

  which equals the gradient on the full batch for a mean loss. The optimizer
  update and its application run under ``jit``'s global view. With
  ``zero1=True`` every optimizer-state array with a dimension divisible by
  the number of devices is split along it (:func:`zero1_shardings`): each
  device keeps 1/n of the momentum, the gradient is reduce-scattered to
  those shards (one ``psum_scatter``), each device updates 1/n of the
  parameters, and the compiler all-gathers them: one reduce-scatter and one
  all-gather per optimizer step, the traffic of one all-reduce. XLA:GPU
  compiles it so; libtpu compiles some reduce-scatters (and on large v5e
  slices the all-gather) as all-reduces: ZeRO-1 moved 1.0x the bytes of
  plain data parallelism (the default) on v6e 2x2, 1.5x on v5e 4x4 and 2x
  on v5e 16x16 (``benchmarks/aot.py``), so on TPU choose it when the
  optimizer state does not fit otherwise. Transformations
  that read the whole gradient (global-norm clipping, gradient restart) stay
  exact: the compiler reduces across the shards.

  The gradient crosses devices in float32 (or the gradient's dtype if
  wider), whatever dtype the model computes in; ``reduce_dtype=jnp.bfloat16``
  halves that traffic at the cost of a bfloat16-rounded sum (as PyTorch
  DDP's bf16 compression hook does). Keyword arguments of ``step`` reach
  ``loss_fn`` as static values: each distinct value compiles once (e.g. a
  flag that freezes part of the model).

  Pass ``nag_optax.accumulate_gradients(optimizer, k)`` as the optimizer to
  accumulate across calls instead: micro-steps then run no collective and
  leave the parameters alone, and the emitting call reduces once.

  Model state follows one rule on every path (:mod:`nag_optax.parallel`):
  each device updates it from its own data, and the replicas are made equal
  once per optimizer step (floats averaged, integers their maximum).

  Args:
    loss_fn: ``loss_fn(params, batch, **static) -> loss`` (or ``(loss,
      aux)`` with ``has_aux``), per device; with model state
      ``loss_fn(params, batch, model_state, **static) -> (loss,
      new_model_state)`` (or ``(loss, (new_model_state, aux))``). Its
      collectives may use the mesh axis name
      (e.g. Flax ``BatchNorm(axis_name=...)`` for statistics over the
      global batch).
    optimizer: an optax optimizer, or ``nag_optax.accumulate_gradients(...)``
      (outermost, with the rest inside it). It receives ``value=`` the loss
      averaged over devices (for ``restart="function"``).
    mesh: a one-axis mesh (default: :func:`data_mesh` over all devices).
    micro_batches: micro-batches per step: each device's slice of the batch
      is split into this many equal parts whose gradients are averaged
      inside the step before the one reduction.
    zero1: shard the optimizer state over the data axis (ZeRO stage 1).
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    reduce_dtype: the dtype of the one gradient reduction (None: float32, or
      the gradient's dtype if wider).
    donate: donate the input state to the step.

  Returns:
    A :class:`DataParallel`; ``step(state, batch, **static)``.

  Raises:
    ValueError: for a mesh with more than one axis, a bad ``micro_batches``
      or a ``reduce_dtype`` that is not a floating-point dtype; at the first
      step, for a batch whose per-device slice ``micro_batches`` does not
      divide.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import nag_optax
    >>> from nag_optax import parallel
    >>> def loss_fn(params, batch):
    ...   x, y = batch
    ...   return jnp.mean((x @ params["w"] - y) ** 2)
    >>> mesh = parallel.data_mesh(jax.devices()[:1])
    >>> dp = parallel.jit_data_parallel(loss_fn, nag_optax.nesterov(0.1, 0.9), mesh)
    >>> state = dp.init({"w": jnp.zeros((3, 1))})
    >>> batch = (np.ones((4, 3), np.float32), np.ones((4, 1), np.float32))
    >>> state, metrics = dp.step(state, dp.shard_batch(batch))
    >>> dp.to_host(state.params)["w"].ravel()
    array([0.38, 0.38, 0.38], dtype=float32)
  """
  mesh = data_mesh() if mesh is None else mesh
  axis = _data_axis(mesh)
  micro_batches = _step.check_micro_batches(micro_batches)
  opt_state_kind = _opt_state_kind(mesh, zero1)
  placement = _placement(
    mesh,
    optimizer,
    lambda state: _step.state_kinds(state, optimizer, opt_state_kind),
  )
  step_fn = _step.make_train_step(
    loss_fn,
    optimizer,
    axis_name=axis,
    mapped=_mapped(mesh, axis),
    has_aux=has_aux,
    micro_batches=micro_batches,
    reduce_dtype=_step.check_reduce_dtype(reduce_dtype),
    gradient_kinds=(
      (lambda params: _zero1_specs(params, mesh))
      if zero1
      else (lambda params: _step.REPLICATED)
    ),
    constrain=lambda tree, kinds: jax.lax.with_sharding_constraint(
      tree, _shardings(mesh, kinds)
    ),
  )
  metrics_sharding = NamedSharding(mesh, PartitionSpec(axis))

  def compile_for(state, static_kwargs):
    return jax.jit(
      functools.partial(step_fn, **static_kwargs),
      out_shardings=(placement.shardings_of(state), metrics_sharding),
      donate_argnums=(0,) if donate else (),
    )

  return _step.DataParallel(
    init=placement.init,
    step=_CompiledPerStructure(compile_for),
    shard_batch=lambda batch: global_batch(batch, mesh),
    to_host=_host.to_host,
    from_host=placement.from_host,
    abstract_state=placement.abstract_state,
  )
