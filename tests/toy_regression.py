"""The small regression problem of the data-parallel tests.

Shared by tests/test_parallel.py (in process) and tests/multiprocess_worker.py
(one copy per process of tests/test_multiprocess.py), so that every path is
compared with the same one-device reference. Arrays come in float32 unless a
float64 ``dtype`` is asked for (under ``jax.enable_x64``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nag_optax

K = 2  # calls per emitted step of accumulate_gradients
STEPS = 4  # calls: two emitted steps
ROWS = 32  # global batch


def data(dtype=np.float32):
  """(x, y) for every step: shapes (STEPS, ROWS, 4) and (STEPS, ROWS, 1)."""
  rng = np.random.default_rng(11)
  x = rng.normal(size=(STEPS, ROWS, 4)).astype(dtype)
  y = rng.normal(size=(STEPS, ROWS, 1)).astype(dtype)
  return x, y


def init_params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {
    "w1": jnp.asarray(rng.normal(size=(4, 16)) * 0.5, dtype),
    "b1": jnp.zeros(16, dtype),
    "w2": jnp.asarray(rng.normal(size=(16, 1)) * 0.5, dtype),
    "b2": jnp.zeros(1, dtype),
  }


def predict(params, x):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((predict(params, x) - y) ** 2)


def inner():
  """The inner optimizer: a schedule and weight decay, so counts matter."""
  schedule = optax.linear_schedule(0.1, 0.02, transition_steps=4)
  return nag_optax.nesterov(schedule, momentum=0.9, weight_decay=1e-3)


def reference_params(every_k=K, dtype=np.float32):
  """One device, the full batch, optax.MultiSteps(inner(), every_k) (the
  inner optimizer itself for every_k=1): what every path must give."""
  if every_k == 1:
    tx = inner()
  else:
    tx = optax.MultiSteps(inner(), every_k, accumulator_dtype=dtype)
  params = init_params(dtype)
  state = tx.init(params)
  for x, y in zip(*data(dtype), strict=True):
    grads = jax.grad(loss_fn)(params, (x, y))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params
