"""Data-parallel training steps: ``jax.pmap``, or ``jax.jit`` over a mesh.

Two builders turn a loss function and an optimizer into a data-parallel
training step; both return a :class:`DataParallel` (``init``, ``step``,
``shard_batch``, ``to_host``, ``from_host``, ``abstract_state``) around a
:class:`TrainState` (params, opt_state, model_state), build the same step,
and run unchanged in several processes started with
``jax.distributed.initialize`` (every process feeds its host-local batch):

* :func:`jit_data_parallel`: ``jax.jit`` over a one-axis mesh; per-device
  work in ``jax.shard_map`` with the package's own collectives, the
  optimizer under ``jit``; ``zero1=True`` shards the optimizer state
  (ZeRO-1).
* :func:`pmap_data_parallel`: ``jax.pmap`` over the local devices (JAX keeps
  ``pmap`` in maintenance mode; it is here for code built around it).

The package writes the step itself, rather than distributing one written
for a single device, so that it controls where and in which dtype the
gradient crosses devices: once per optimizer step, in float32 unless
``reduce_dtype`` asks otherwise, never inside the micro-batch loop.
:func:`compiled_summary` reads that back from a compiled step, also one
compiled for a TPU slice or GPUs this machine does not have
(:func:`aot_target`).

**One reduction per optimizer step.** Each device takes the gradient of
``loss_fn`` on its slice of the batch. With ``micro_batches=k`` the slice is
split into k micro-batches whose gradients a ``lax.scan`` averages inside
the compiled step (nothing is carried between calls, so there is never a
mid-cycle state to checkpoint); the average across devices then runs once
per step: an all-reduce, or with ZeRO-1 one reduce-scatter to the
optimizer-state shards and one all-gather of the updated parameters. Pass
``nag_optax.accumulate_gradients(optimizer, k)`` (outermost) to accumulate
across calls instead: micro-steps run no collective and leave the parameters
alone; the emitting call reduces once.

**Model state** (e.g. BatchNorm statistics), one rule on every path: each
device updates it from its own data, micro-batch after micro-batch, and the
replicas are made equal once per optimizer step (on the emitting call with
``accumulate_gradients``): floating-point leaves averaged across devices,
integer and boolean leaves their maximum. Between the emitted steps of
``accumulate_gradients`` it is device-local, like the accumulator, and
stored (and returned by ``to_host``) with a leading device axis.

**Checkpoints.** ``dp.to_host(state)`` is a NumPy copy of the whole state,
every device's part of device-local leaves included, for any checkpointer;
``dp.from_host(host_state)`` places it back and training continues exactly.
On the mesh paths the sharded state also saves and restores directly with
Orbax: restore into ``dp.abstract_state(params, model_state)``, which
carries the shardings ``init`` gives.

Example (8 local devices, 4 micro-batches per step)::

  import jax, jax.numpy as jnp, nag_optax
  from nag_optax import parallel

  def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)

  dp = parallel.jit_data_parallel(
      loss_fn, nag_optax.nesterov(0.1, 0.9), micro_batches=4, zero1=True)
  state = dp.init({"w": jnp.zeros((5, 1))})
  for x, y in host_batches:                  # this host's share of the batch
    state, metrics = dp.step(state, dp.shard_batch((x, y)))
  params = dp.to_host(state.params)

Several hosts: call ``jax.distributed.initialize()`` first on every process;
try it on one machine with ``python -m nag_optax launch -n 2 -d 4 python
train.py``, where the script calls :func:`initialize`.
"""

from nag_optax.parallel._aot import AotTarget
from nag_optax.parallel._aot import Collective
from nag_optax.parallel._aot import aot_target
from nag_optax.parallel._aot import collectives
from nag_optax.parallel._aot import compiled_summary
from nag_optax.parallel._aot import gpu_target_config
from nag_optax.parallel._host import to_host
from nag_optax.parallel._mesh import batch_sharding
from nag_optax.parallel._mesh import data_mesh
from nag_optax.parallel._mesh import global_batch
from nag_optax.parallel._mesh import jit_data_parallel
from nag_optax.parallel._mesh import zero1_shardings
from nag_optax.parallel._multiprocess import ProcessResult
from nag_optax.parallel._multiprocess import free_port
from nag_optax.parallel._multiprocess import initialize
from nag_optax.parallel._multiprocess import launch_local
from nag_optax.parallel._pmap import pmap_data_parallel
from nag_optax.parallel._pmap import replicate
from nag_optax.parallel._pmap import split_batch
from nag_optax.parallel._pmap import unreplicate
from nag_optax.parallel._step import DataParallel
from nag_optax.parallel._step import TrainState

__all__ = (
  "AotTarget",
  "Collective",
  "DataParallel",
  "ProcessResult",
  "TrainState",
  "aot_target",
  "batch_sharding",
  "collectives",
  "compiled_summary",
  "data_mesh",
  "free_port",
  "global_batch",
  "gpu_target_config",
  "initialize",
  "jit_data_parallel",
  "launch_local",
  "pmap_data_parallel",
  "replicate",
  "split_batch",
  "to_host",
  "unreplicate",
  "zero1_shardings",
)
