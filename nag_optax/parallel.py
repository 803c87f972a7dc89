"""Data-parallel training steps: ``jax.pmap``, or ``jax.jit`` over a mesh.

All of nag_optax's ``pmap``-specific code lives in this module. Three paths
turn a loss function and an optimizer into a data-parallel training step; all
return a :class:`DataParallel` (``init``, ``step``, ``shard_batch``,
``to_host``, ``from_host``) around a :class:`TrainState` (params,
opt_state, model_state), and all run unchanged in several processes started
with ``jax.distributed.initialize``: every process feeds its host-local
batch.

``pmap_data_parallel``
  Replicates everything on the local devices and splits each host batch
  across them. With ``nag_optax.accumulate_gradients(..., axis_name=...)``
  and ``reduce_gradients=False`` the gradients are averaged across devices
  once per emitted step, and micro-steps neither communicate nor touch the
  parameters: the fastest path when memory allows a full accumulator per
  device (measured on 8 CPU devices: benchmarks/accumulation.py). Pass
  ``accumulate_gradients`` itself, with other transformations inside it:
  the step then applies the update inside its emitting branch (wrapped,
  e.g. in ``optax.chain``, it must take the zero updates of micro-steps).

``shard_map_data_parallel``
  The same communication pattern without ``pmap`` (JAX's maintenance-mode
  API): ``jax.jit(jax.shard_map(...))`` over a mesh, explicit collectives,
  the accumulator device-local (stored with a leading device axis).

``jit_data_parallel``
  ``jax.jit`` with ``NamedSharding`` over a mesh with a data axis: the batch
  is sharded, the parameters replicated, and the compiler inserts the
  gradient all-reduce. ``zero1=True`` shards the optimizer state (momentum,
  accumulator) over the data axis (ZeRO stage 1): each device holds 1/n of
  it and the compiler inserts the gathers. The gradient is then reduced on
  every micro-step (to 1/n shards), the price of the memory saved.

Example (8 local devices, 4 micro-batches per step)::

  import jax, jax.numpy as jnp, nag_optax
  from nag_optax import parallel

  def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)

  tx = nag_optax.accumulate_gradients(
      nag_optax.nesterov(0.1, 0.9), 4, axis_name="batch")
  dp = parallel.pmap_data_parallel(loss_fn, tx, reduce_gradients=False)
  state = dp.init({"w": jnp.zeros((5, 1))})
  for x, y in host_batches:                  # this host's share of the batch
    state, metrics = dp.step(state, dp.shard_batch((x, y)))
  params = dp.to_host(state.params)

Data parallel on clusters
-------------------------

The same script runs on one device, several local devices, and several hosts.
On several hosts, start one process per host (or per GPU) and call
``jax.distributed.initialize()`` before anything else touches JAX:

* **TPU pods** (Cloud TPU VMs): run the script on every worker (``gcloud
  compute tpus tpu-vm ssh NAME --worker=all --command="python train.py"``);
  ``jax.distributed.initialize()`` needs no arguments there.
* **GPU clusters under SLURM** (``srun``), Open MPI (``mpirun``) or
  Kubernetes: one process per node (all its GPUs) or per GPU;
  ``jax.distributed.initialize()`` reads the cluster from the environment.
  Elsewhere pass ``coordinator_address="host0:1234"``, ``num_processes`` and
  ``process_id`` on every process (and ``local_device_ids`` for one process
  per GPU). The coordinator port must be reachable from every host.
* Which path: ``pmap_data_parallel`` or ``shard_map_data_parallel`` with
  ``accumulate_gradients(..., axis_name=<axis>)`` send one all-reduce per
  emitted step, the best choice across slow links (between hosts);
  ``jit_data_parallel(..., zero1=True)`` divides the optimizer state by the
  number of devices, for models whose momentum and accumulator do not fit
  replicated.
* Each process loads its own shard of the data (e.g. ``dataset.shard(
  jax.process_count(), jax.process_index())``) with the same per-process
  batch size; ``dp.shard_batch`` turns it into the global batch (pmap:
  split over local devices; jit: ``jax.make_array_from_process_local_data``).
  The global batch is the per-process batch times ``jax.process_count()``.
* Every process runs the same steps in the same order; checkpoint or log
  from ``jax.process_index() == 0`` after ``dp.to_host`` (which gathers
  ZeRO-sharded state across processes: call it on every process), and
  resume on every process with ``dp.from_host(host_state)``, which places
  the state as ``dp.init`` does, mid-cycle too. (Under pmap the
  device-local accumulator covers each process's own devices: there, save
  on every process or checkpoint right after an emitted step.)
* Try the multi-host code on one machine first:
  ``python -m nag_optax launch -n 2 -d 4 python train.py`` starts 2
  processes with 4 CPU devices each on 127.0.0.1; the script calls
  :func:`initialize` (a no-op when not launched this way).
"""

import os
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from nag_optax import _accumulation
from nag_optax import _launch
from nag_optax._launch import ProcessResult
from nag_optax._launch import free_port
from nag_optax._launch import launch_local

__all__ = (
  "DataParallel",
  "ProcessResult",
  "TrainState",
  "batch_sharding",
  "data_mesh",
  "free_port",
  "global_batch",
  "initialize",
  "jit_data_parallel",
  "launch_local",
  "pmap_data_parallel",
  "replicate",
  "shard_map_data_parallel",
  "split_batch",
  "to_host",
  "unreplicate",
  "zero1_shardings",
)


class TrainState(NamedTuple):
  """What a data-parallel step carries from one call to the next.

  Attributes:
    params: the model parameters.
    opt_state: the optimizer state.
    model_state: non-trained model variables (e.g. Flax ``batch_stats``), or
      None. With model state, ``loss_fn(params, batch, model_state)`` returns
      ``(loss, new_model_state)``.
  """

  params: Any
  opt_state: Any
  model_state: Any = None


class DataParallel(NamedTuple):
  """A data-parallel training step and the placement functions it needs.

  Attributes:
    init: ``init(params, model_state=None) -> TrainState`` placed on the
      devices, with the optimizer state initialised there.
    step: ``step(state, batch) -> (state, metrics)``, compiled once; the
      input state is donated. ``step.lower(state, batch)`` gives the lowered
      program (``.compile().as_text()``, ``.cost_analysis()``).
      ``metrics["loss"]`` (and ``metrics["aux"]`` with ``has_aux``) are per
      device under pmap and shard_map (no collective), global under jit.
    shard_batch: this process's batch (leading axis the per-process batch
      size) -> the batch ``step`` takes.
    to_host: device tree -> one NumPy copy (first replica under pmap;
      gathers sharded arrays under jit, across processes too). Leaves that
      differ between devices keep a leading device axis, so a state taken
      mid-cycle holds every device's part: the accumulator of
      ``accumulate_gradients`` (``acc_grads``, ``skip_state``) under pmap
      and shard_map, and under pmap, in a whole :class:`TrainState` whose
      optimizer accumulates, the model state (averaged across devices only
      on emitted steps; pass ``state.model_state`` alone for its first
      replica).
    from_host: ``from_host(host_state) -> TrainState`` placed as ``init``
      places it, from ``to_host(state)`` (e.g. a restored checkpoint): the
      step continues exactly where that state left off, mid-cycle too,
      without tracing again. Under pmap with several processes the
      accumulator covers this process's devices only: save and restore it
      on every process, or checkpoint right after an emitted step
      (:func:`nag_optax.accumulation_emitted`).
  """

  init: Callable[..., TrainState]
  step: Callable[[TrainState, Any], tuple[TrainState, Any]]
  shard_batch: Callable[[Any], Any]
  to_host: Callable[[Any], Any]
  from_host: Callable[[TrainState], TrainState]


# --------------------------------------------------------------------------
# Multi-process start-up.


def initialize(*, initialization_timeout: int = 120) -> bool:
  """Joins the multi-process run started by :func:`launch_local`, if any.

  Reads the coordinator, process id and device count that
  :func:`launch_local` (or ``python -m nag_optax launch``) put in the
  environment, sets the number of CPU devices and calls
  ``jax.distributed.initialize`` bound to 127.0.0.1 only. Call it before any
  other use of JAX. Without that environment it does nothing, so the same
  script also runs as a single process; on a real cluster call
  ``jax.distributed.initialize()`` yourself.

  Args:
    initialization_timeout: seconds to wait for all processes to connect.

  Returns:
    True if this process joined a multi-process run.
  """
  env = os.environ
  if _launch.ENV_COORDINATOR not in env:
    return False
  address = env[_launch.ENV_COORDINATOR]
  jax.config.update("jax_num_cpu_devices", int(env[_launch.ENV_LOCAL_DEVICES]))
  jax.distributed.initialize(
    coordinator_address=address,
    coordinator_bind_address=address,
    num_processes=int(env[_launch.ENV_NUM_PROCESSES]),
    process_id=int(env[_launch.ENV_PROCESS_ID]),
    initialization_timeout=initialization_timeout,
  )
  return True


# --------------------------------------------------------------------------
# The loss, shared by both paths.


def _loss_and_grads(loss_fn, has_aux, params, batch, model_state):
  """(loss, new_model_state, aux, grads) for either loss_fn signature."""
  with_state = model_state is not None

  def wrapped(p):
    if not with_state:
      out = loss_fn(p, batch)
      loss, aux = out if has_aux else (out, None)
      return loss, (None, aux)
    out = loss_fn(p, batch, model_state)
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(
        "With model_state, loss_fn(params, batch, model_state) must return "
        "(loss, new_model_state), or (loss, (new_model_state, aux)) with "
        "has_aux=True."
      )
    loss, rest = out
    new_state, aux = rest if has_aux else (rest, None)
    return loss, (new_state, aux)

  (loss, (new_model_state, aux)), grads = jax.value_and_grad(wrapped, has_aux=True)(
    params
  )
  return loss, new_model_state, aux, grads


def _metrics(loss, aux):
  return {"loss": loss} if aux is None else {"loss": loss, "aux": aux}


_LOCAL = object()  # marks device-local state leaves (specs, host copies)


def _map_device_local(tree, fn):
  """Applies ``fn`` to the device-local leaves of every accumulation state.

  ``acc_grads`` (and ``skip_state``) of ``accumulate_gradients`` differ
  between devices until an emitted step averages them: under ``shard_map``
  they are stored with a leading device axis, sharded over the data axis,
  and host copies (``DataParallel.to_host``) keep that axis on every path.
  """
  is_acc = lambda x: isinstance(x, _accumulation.AccumulateGradientsState)

  def local(x):
    if not is_acc(x):
      return x
    return x._replace(
      acc_grads=jax.tree.map(fn, x.acc_grads),
      skip_state=jax.tree.map(fn, x.skip_state),
    )

  return jax.tree.map(local, tree, is_leaf=is_acc)


def _find_accumulation(opt_state):
  is_state = lambda x: isinstance(x, _accumulation.AccumulateGradientsState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def _update_and_apply(optimizer, grads, opt_state, params):
  """``optimizer.update`` then ``optax.apply_updates``: (params, opt_state).

  On ``accumulate_gradients`` micro-steps the updates are zeros, so the
  parameters are passed through untouched instead of adding zeros (which
  reads and writes them all). An ``accumulate_gradients`` optimizer used
  as is applies its update inside its emitting branch (no zero updates
  written on micro-steps); one wrapped in other transformations is applied
  under a conditional on :func:`nag_optax.accumulation_emitted`.
  """
  fused = _accumulation.update_and_apply_for(optimizer)
  if fused is not None:
    return fused(grads, opt_state, params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  accumulations = _find_accumulation(opt_state)
  if not accumulations:
    return optax.apply_updates(params, updates), opt_state
  params = jax.lax.cond(
    accumulations[0].emitted,
    optax.apply_updates,
    lambda params, updates: params,
    params,
    updates,
  )
  return params, opt_state


def _local_leaves(state):
  """``state`` with every device-local leaf replaced by ``_LOCAL``."""
  return _map_device_local(state, lambda _: _LOCAL)


def _check_host_state(host_state, num_devices, markers=None):
  """A TrainState whose device-local leaves (``_LOCAL`` in ``markers``,
  default :func:`_local_leaves`) have ``num_devices`` rows; the jit path
  (``num_devices=None``) keeps no device-local leaves."""
  if not isinstance(host_state, TrainState):
    raise TypeError(
      "from_host takes a TrainState (what to_host(state) returns, e.g. "
      f"parallel.TrainState(*restored)), got {type(host_state).__name__}."
    )

  def check(path, x, marker):
    if num_devices is None or marker is not _LOCAL:
      return
    if np.ndim(x) == 0 or np.shape(x)[0] != num_devices:
      raise ValueError(
        f"The device-local state leaf at {jax.tree_util.keystr(path)} "
        f"has shape {np.shape(x)}: its leading axis must hold one row per "
        f"device ({num_devices}), as to_host returns it. Was the state saved "
        "on a different number of devices?"
      )

  if markers is None:
    markers = _local_leaves(host_state)
  jax.tree_util.tree_map_with_path(check, host_state, markers)


def _place(tree, shardings):
  """Host arrays (identical on every process) -> global arrays."""

  def place(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree, shardings)


def _step_per_state_structure(compile_for):
  """A ``step(state, batch)`` that compiles ``compile_for(state)`` once per
  state structure (the shardings depend on it); ``step.lower`` lowers it.
  """
  compiled = {}

  def jitted(state):
    key = jax.tree.structure(state)
    if key not in compiled:
      compiled[key] = compile_for(state)
    return compiled[key]

  def step(state, batch):
    return jitted(state)(state, batch)

  step.lower = lambda state, batch: jitted(state).lower(state, batch)
  return step


# --------------------------------------------------------------------------
# The pmap path.


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


_IDENTITY_PMAPS: dict[str, Callable[[Any], Any]] = {}


def _identity_pmap(axis_name):
  if axis_name not in _IDENTITY_PMAPS:
    _IDENTITY_PMAPS[axis_name] = jax.pmap(lambda x: x, axis_name=axis_name)
  return _IDENTITY_PMAPS[axis_name]


def unreplicate(tree: Any) -> Any:
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
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  *,
  axis_name: str = "batch",
  reduce_gradients: bool = True,
  has_aux: bool = False,
  donate: bool = True,
) -> DataParallel:
  r"""A ``jax.pmap`` data-parallel training step over the local devices.

  Each device computes the gradient of ``loss_fn`` on its slice of the batch;
  the gradients are averaged across devices (all processes' devices in a
  multi-process run), the optimizer updates the replicated parameters and all
  replicas stay identical:

  .. math::

    g = \frac{1}{n} \sum_{d=1}^{n} \nabla_\theta \ell(\theta; B_d)

  which equals the gradient on the full batch for a mean loss and equal
  slices. Model state (``TrainState.model_state``, e.g. BatchNorm running
  statistics) is averaged across devices on every step the optimizer emits
  (every step without accumulation), so the replicas of it agree there too.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``); with model state ``loss_fn(params, batch, model_state) ->
      (loss, new_model_state)`` (or ``(loss, (new_model_state, aux))``).
    optimizer: an optax optimizer.
    axis_name: the ``pmap`` axis name (pass it to Flax ``BatchNorm``).
    reduce_gradients: average the gradients in the step, on every call. Pass
      False when ``optimizer`` is ``nag_optax.accumulate_gradients(...,
      axis_name=axis_name)``, which averages them once per emitted step.
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    donate: donate the input state to the step (saves memory).

  Returns:
    A :class:`DataParallel`.

  Raises:
    ValueError: (at the first step) with ``reduce_gradients=False`` and no
      ``accumulate_gradients`` state in the optimizer state: nothing would
      average the gradients and the replicas would drift apart.
  """

  def init_fn(params, model_state=None):
    params = replicate(params, axis_name=axis_name)
    opt_state = jax.pmap(optimizer.init, axis_name=axis_name)(params)
    if model_state is not None:
      model_state = replicate(model_state, axis_name=axis_name)
    return TrainState(params, opt_state, model_state)

  def step_fn(state, batch):
    if not reduce_gradients and not _find_accumulation(state.opt_state):
      raise ValueError(
        "reduce_gradients=False needs an optimizer that averages gradients "
        "across devices itself: nag_optax.accumulate_gradients(..., "
        f"axis_name={axis_name!r})."
      )
    loss, model_state, aux, grads = _loss_and_grads(
      loss_fn, has_aux, state.params, batch, state.model_state
    )
    if reduce_gradients:
      grads = jax.lax.pmean(grads, axis_name)
    params, opt_state = _update_and_apply(
      optimizer, grads, state.opt_state, state.params
    )
    if model_state is not None:
      model_state = _sync_on_emitted_steps(model_state, opt_state, axis_name)
    return TrainState(params, opt_state, model_state), _metrics(loss, aux)

  step = jax.pmap(step_fn, axis_name=axis_name, donate_argnums=(0,) if donate else ())
  return DataParallel(
    init=init_fn,
    step=step,
    shard_batch=split_batch,
    to_host=_pmap_to_host,
    from_host=lambda host_state: _pmap_from_host(host_state, axis_name),
  )


def _pmap_local_leaves(tree):
  """Device-local leaves under pmap: the accumulator and, in a whole
  TrainState whose optimizer accumulates, the model state (averaged across
  devices only on emitted steps)."""
  markers = _local_leaves(tree)
  if isinstance(tree, TrainState) and _find_accumulation(tree.opt_state):
    local = jax.tree.map(lambda _: _LOCAL, tree.model_state)
    markers = markers._replace(model_state=local)
  return markers


def _pmap_to_host(tree):
  """First replicas, but every local device's row of device-local leaves."""
  devices = jax.local_devices()

  def get(x, marker):
    if marker is not _LOCAL:
      return np.asarray(unreplicate(x))
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: devices.index(s.device))
    return np.concatenate([np.asarray(s.data) for s in shards])

  return jax.tree.map(get, tree, _pmap_local_leaves(tree))


def _pmap_from_host(host_state, axis_name):
  n = jax.local_device_count()
  markers = _pmap_local_leaves(host_state)
  _check_host_state(host_state, n, markers)
  stacked = jax.tree.map(
    lambda x, marker: (
      np.asarray(x)
      if marker is _LOCAL
      else np.broadcast_to(np.asarray(x), (n, *np.shape(x)))
    ),
    host_state,
    markers,
  )
  return _identity_pmap(axis_name)(stacked)


def _sync_on_emitted_steps(model_state, opt_state, axis_name):
  """pmean of the floating model state, only on emitted optimizer steps.

  Running averages are linear in the batch statistics, so averaging the
  replicas once per emitted step gives what averaging every micro-step would.
  """

  def mean(tree):
    return jax.tree.map(
      lambda x: (
        jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x
      ),
      tree,
    )

  accumulations = _find_accumulation(opt_state)
  if not accumulations:
    return mean(model_state)
  emitted = accumulations[0].emitted
  return jax.lax.cond(emitted, mean, lambda tree: tree, model_state)


# --------------------------------------------------------------------------
# The jit + NamedSharding path.


def data_mesh(devices: Any = None, *, axis_name: str = "data") -> jax.sharding.Mesh:
  """A one-axis mesh over ``devices`` (default: all devices, all processes).

  The axis type is ``Auto``: the compiler propagates shardings and inserts
  the collectives (``jax.make_mesh`` now defaults to ``Explicit``).
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(
    np.asarray(devices), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def _data_axis(mesh: jax.sharding.Mesh) -> str:
  if len(mesh.axis_names) != 1:
    raise ValueError(
      "jit_data_parallel needs a one-axis (data) mesh, got axes "
      f"{mesh.axis_names}; see parallel.data_mesh."
    )
  return mesh.axis_names[0]


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the mesh's data axis."""
  return NamedSharding(mesh, PartitionSpec(_data_axis(mesh)))


def global_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's batch -> global arrays sharded over the data axis.

  In a single process this places the batch; with several processes each
  passes its own (same-sized) batch and the global batch is their
  concatenation in process order (``jax.make_array_from_process_local_data``).

  Raises:
    ValueError: if a leading dimension is not divisible by the number of
      this process's devices in the mesh.
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


def zero1_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """ZeRO-1 shardings: each array split over the data axis along one dimension.

  Each leaf is split along its first dimension divisible by the size of the
  data axis (the largest such dimension of equal rank breaks no tie: the
  first is taken); scalars and leaves with no such dimension are replicated.

  Args:
    tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g.
      ``jax.eval_shape(optimizer.init, params)``).
    mesh: a one-axis mesh (:func:`data_mesh`).

  Returns:
    A matching tree of ``NamedSharding``.
  """
  axis = _data_axis(mesh)
  n = mesh.shape[axis]

  def rule(x):
    spec = [None] * len(x.shape)
    for i, size in enumerate(x.shape):
      if size >= n and size % n == 0:
        spec[i] = axis
        break
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(rule, tree)


def to_host(tree: Any) -> Any:
  """One NumPy copy of each array, wherever its shards live.

  Replicated arrays are read from a local shard; sharded ones are gathered
  (across processes with ``process_allgather``: call it on every process).
  """
  from jax.experimental import multihost_utils

  def get(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_shards[0].data)
    if x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def _place_replicated(tree, mesh):
  """Host values (identical on every process) -> replicated global arrays."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return _place(tree, jax.tree.map(lambda _: replicated, tree))


def jit_data_parallel(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh | None = None,
  *,
  zero1: bool = False,
  has_aux: bool = False,
  donate: bool = True,
) -> DataParallel:
  r"""A ``jax.jit`` data-parallel step over a mesh with one data axis.

  The batch is sharded over the data axis, parameters and model state are
  replicated, and the step is written for one device: the compiler averages
  the gradient across devices (the loss is a mean over the global batch).
  With ``zero1=True`` every optimizer-state array with a dimension divisible
  by the number of devices is split along it (:func:`zero1_shardings`): each
  device keeps 1/n of the momentum and of the ``accumulate_gradients``
  accumulator and updates 1/n of the parameters, and the compiler inserts the
  reduce-scatter and all-gather. Under ``jit`` the gradient is reduced on
  every micro-step; use ``accumulate_gradients`` without ``axis_name`` here
  (the pmap path, or ``jax.shard_map`` with ``axis_name``, reduces once per
  emitted step instead).

  Args:
    loss_fn: as for :func:`pmap_data_parallel`, on the global batch.
    optimizer: an optax optimizer.
    mesh: a one-axis mesh (default: :func:`data_mesh` over all devices).
    zero1: shard the optimizer state over the data axis.
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    donate: donate the input state to the step.

  Returns:
    A :class:`DataParallel`.
  """
  mesh = data_mesh() if mesh is None else mesh
  _data_axis(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def shardings_of(state_shapes):
    opt = (
      zero1_shardings(state_shapes.opt_state, mesh)
      if zero1
      else jax.tree.map(lambda _: replicated, state_shapes.opt_state)
    )
    return TrainState(
      params=jax.tree.map(lambda _: replicated, state_shapes.params),
      opt_state=opt,
      model_state=jax.tree.map(lambda _: replicated, state_shapes.model_state),
    )

  def make_state(params, model_state):
    return TrainState(params, optimizer.init(params), model_state)

  def init_fn(params, model_state=None):
    params = _place_replicated(params, mesh)
    if model_state is not None:
      model_state = _place_replicated(model_state, mesh)
    shardings = shardings_of(jax.eval_shape(make_state, params, model_state))
    return jax.jit(make_state, out_shardings=shardings)(params, model_state)

  def step_fn(state, batch):
    loss, model_state, aux, grads = _loss_and_grads(
      loss_fn, has_aux, state.params, batch, state.model_state
    )
    params, opt_state = _update_and_apply(
      optimizer, grads, state.opt_state, state.params
    )
    return TrainState(params, opt_state, model_state), _metrics(loss, aux)

  def compile_for(state):
    return jax.jit(
      step_fn,
      out_shardings=(shardings_of(state), replicated),
      donate_argnums=(0,) if donate else (),
    )

  def from_host(host_state):
    _check_host_state(host_state, None)
    host_state = jax.tree.map(np.asarray, host_state)  # shapes for ZeRO-1
    return _place(host_state, shardings_of(host_state))

  return DataParallel(
    init=init_fn,
    step=_step_per_state_structure(compile_for),
    shard_batch=lambda batch: global_batch(batch, mesh),
    to_host=to_host,
    from_host=from_host,
  )


# --------------------------------------------------------------------------
# The jit(shard_map) path: pmap's communication pattern without pmap.


def _sync_every_step(model_state, axis_name):
  """Averages the model state's replicas (integers: their maximum)."""

  def mean(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jax.lax.pmean(x, axis_name)
    return jax.lax.pmax(x.astype(jnp.int32), axis_name).astype(x.dtype)

  return jax.tree.map(mean, model_state)


def shard_map_data_parallel(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  mesh: jax.sharding.Mesh | None = None,
  *,
  reduce_gradients: bool = True,
  has_aux: bool = False,
  donate: bool = True,
) -> DataParallel:
  r"""A ``jax.jit(jax.shard_map(...))`` data-parallel step over a mesh.

  The explicit-collectives path that JAX recommends in place of ``pmap``,
  with :func:`pmap_data_parallel`'s semantics: each device computes the
  gradient on its slice of the batch (with respect to parameters cast to
  device-varying, so that it arrives unsummed) and the gradients are averaged
  across the data axis, in the step (``reduce_gradients=True``) or, with
  ``nag_optax.accumulate_gradients(..., axis_name=<the mesh axis>)`` and
  ``reduce_gradients=False``, once per emitted step. Parameters and optimizer
  state are replicated, except the accumulator, which is device-local and
  stored with a leading device axis sharded over the data axis. Model state
  is averaged across devices on every step (a small all-reduce). Metrics
  come back per device, with a leading device axis.

  Args:
    loss_fn: as for :func:`pmap_data_parallel`.
    optimizer: an optax optimizer.
    mesh: a one-axis mesh (default: :func:`data_mesh` over all devices); its
      axis name is the ``axis_name`` of ``accumulate_gradients``.
    reduce_gradients: average the gradients in the step, on every call;
      False when the optimizer does it once per emitted step.
    has_aux: whether ``loss_fn`` returns auxiliary outputs.
    donate: donate the input state to the step.

  Returns:
    A :class:`DataParallel`.
  """
  mesh = data_mesh() if mesh is None else mesh
  axis = _data_axis(mesh)
  n = mesh.shape[axis]
  P = PartitionSpec

  def specs_of(state):
    marked = _map_device_local(state.opt_state, lambda _: _LOCAL)
    opt = jax.tree.map(lambda x: P(axis) if x is _LOCAL else P(), marked)
    return TrainState(
      params=jax.tree.map(lambda _: P(), state.params),
      opt_state=opt,
      model_state=jax.tree.map(lambda _: P(), state.model_state),
    )

  def make_state(params, model_state):
    opt_state = _map_device_local(
      optimizer.init(params), lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a)))
    )
    return TrainState(params, opt_state, model_state)

  def shardings_of(state):
    return jax.tree.map(
      lambda s: NamedSharding(mesh, s),
      specs_of(state),
      is_leaf=lambda x: isinstance(x, P),
    )

  def init_fn(params, model_state=None):
    params = _place_replicated(params, mesh)
    if model_state is not None:
      model_state = _place_replicated(model_state, mesh)
    shardings = shardings_of(jax.eval_shape(make_state, params, model_state))
    return jax.jit(make_state, out_shardings=shardings)(params, model_state)

  def from_host(host_state):
    _check_host_state(host_state, n)
    return _place(host_state, shardings_of(host_state))

  def body(state, batch):
    opt_state = _map_device_local(state.opt_state, lambda a: a[0])
    if not reduce_gradients and not _find_accumulation(opt_state):
      raise ValueError(
        "reduce_gradients=False needs an optimizer that averages gradients "
        "across devices itself: nag_optax.accumulate_gradients(..., "
        f"axis_name={axis!r})."
      )
    varying = jax.lax.pcast(state.params, axis, to="varying")
    loss, model_state, aux, grads = _loss_and_grads(
      loss_fn, has_aux, varying, batch, state.model_state
    )
    if reduce_gradients:
      grads = jax.lax.pmean(grads, axis)
    params, opt_state = _update_and_apply(optimizer, grads, opt_state, state.params)
    if model_state is not None:
      model_state = _sync_every_step(model_state, axis)
    opt_state = _map_device_local(opt_state, lambda a: a[None])
    metrics = jax.tree.map(lambda x: jnp.asarray(x)[None], _metrics(loss, aux))
    return TrainState(params, opt_state, model_state), metrics

  def compile_for(state):
    specs = specs_of(state)
    return jax.jit(
      jax.shard_map(
        body, mesh=mesh, in_specs=(specs, P(axis)), out_specs=(specs, P(axis))
      ),
      donate_argnums=(0,) if donate else (),
    )

  return DataParallel(
    init=init_fn,
    step=_step_per_state_structure(compile_for),
    shard_batch=lambda batch: global_batch(batch, mesh),
    to_host=to_host,
    from_host=from_host,
  )
