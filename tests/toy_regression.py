"""The small regression problem of the data-parallel tests.

Shared by tests/test_parallel.py (in process) and tests/multiprocess_worker.py
(one copy per process of tests/test_multiprocess.py), so that every path is
compared with the same one-device reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax

K = 2  # micro-batches per emitted step
STEPS = 4  # two emitted steps
ROWS = 32  # global batch


def data():
  """(x, y) for every step: shapes (STEPS, ROWS, 4) and (STEPS, ROWS, 1)."""
  rng = np.random.default_rng(11)
  x = rng.normal(size=(STEPS, ROWS, 4)).astype(np.float32)
  y = rng.normal(size=(STEPS, ROWS, 1)).astype(np.float32)
  return x, y


def init_params():
  rng = np.random.default_rng(0)
  return {
    "w1": jnp.asarray(rng.normal(size=(4, 16)) * 0.5, jnp.float32),
    "b1": jnp.zeros(16),
    "w2": jnp.asarray(rng.normal(size=(16, 1)) * 0.5, jnp.float32),
    "b2": jnp.zeros(1),
  }


def loss_fn(params, batch):
  x, y = batch
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def inner():
  """The inner optimizer: a schedule and weight decay, so counts matter."""
  schedule = optax.linear_schedule(0.1, 0.02, transition_steps=4)
  return nag_optax.nesterov(schedule, momentum=0.9, weight_decay=1e-3)


def reference_params():
  """One device, the full batch, optax.MultiSteps: what every path must give."""
  tx = optax.MultiSteps(inner(), K)
  params = init_params()
  state = tx.init(params)
  for x, y in zip(*data(), strict=True):
    grads = jax.grad(loss_fn)(params, (x, y))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params
