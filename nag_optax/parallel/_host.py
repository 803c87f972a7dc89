"""Host copies of device states and their placement back, for checkpoints."""

from typing import Any
from typing import TypeVar
from typing import overload

import jax
import numpy as np

from nag_optax.parallel import _step

_Tree = TypeVar("_Tree")


@overload
def to_host(tree: jax.Array) -> np.ndarray: ...


@overload
def to_host(tree: _Tree) -> _Tree: ...


def to_host(tree: Any) -> Any:
  """One NumPy copy of each array, wherever its shards live.

  Replicated arrays are read from a local shard; sharded ones are gathered
  (across processes with ``process_allgather``: call it on every process).

  Args:
    tree: a pytree of ``jax.Array`` (sharded, replicated or on one device),
      NumPy arrays or scalars.

  Returns:
    The same tree of ``numpy.ndarray``, each the whole (global) array.

  Example:
    >>> import jax.numpy as jnp
    >>> from nag_optax import parallel
    >>> parallel.to_host({"w": jnp.ones(2)})
    {'w': array([1., 1.], dtype=float32)}
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


def check_host_state(
  host_state: object, kinds: _step.TrainState | None, num_devices: int
) -> None:
  """A TrainState whose device-local leaves have one row per device."""
  if not isinstance(host_state, _step.TrainState):
    raise TypeError(
      "from_host takes a TrainState (what to_host(state) returns, e.g. "
      f"parallel.TrainState(*restored)), got {type(host_state).__name__}."
    )

  def check(path, x, kind):
    if kind != _step.LOCAL:
      return
    if np.ndim(x) == 0 or np.shape(x)[0] != num_devices:
      raise ValueError(
        f"The device-local state leaf at {jax.tree_util.keystr(path)} "
        f"has shape {np.shape(x)}: its leading axis must hold one row per "
        f"device ({num_devices}), as to_host returns it. Was the state saved "
        "on a different number of devices?"
      )

  jax.tree_util.tree_map_with_path(check, host_state, kinds)


def place(tree: _Tree, shardings: Any) -> _Tree:
  """Host arrays (identical on every process) -> global arrays."""

  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree, shardings)
