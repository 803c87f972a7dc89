"""Low-precision momentum: stochastic rounding, dtypes, float32 hyperparameters."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import _precision
from tests import harness

WIDTH = 512  # elements averaged when checking the stored momentum


def _trace_after_constant_gradient(momentum, dtype, steps, **kwargs):
  tx = nag_optax.scale_by_nesterov(momentum, accumulator_dtype=dtype, **kwargs)
  params = jnp.zeros(WIDTH, jnp.float32)
  _, _, state = harness.run(tx, params, steps, grad=jnp.ones_like)
  assert state.trace.dtype == jnp.dtype(dtype)
  return np.asarray(state.trace, np.float64)


def _steps(momentum):
  return int(np.ceil(8 / (1 - momentum)))  # 1 - mu^steps > 0.9996


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.999])
def test_stochastic_rounding_reaches_the_steady_state(momentum, dtype):
  trace = _trace_after_constant_gradient(
    momentum, dtype, _steps(momentum), stochastic_rounding=True, seed=1
  )
  target = 1 / (1 - momentum)
  assert abs(trace.mean() - target) <= 0.02 * target


@pytest.mark.parametrize("momentum,dtype", [(0.99, "bfloat16"), (0.999, "float16")])
def test_round_to_nearest_stalls_below_the_steady_state(momentum, dtype):
  trace = _trace_after_constant_gradient(momentum, dtype, _steps(momentum))
  assert trace.max() < 0.8 / (1 - momentum)


def test_momentum_that_rounds_to_one_in_storage_warns():
  tx = nag_optax.nesterov(0.1, 0.999, accumulator_dtype=jnp.bfloat16)
  with pytest.warns(UserWarning, match="rounds to 1.0 in bfloat16"):
    tx.init(jnp.zeros(3))
  # The stall is real: without stochastic rounding the buffer stops at 256.
  with pytest.warns(UserWarning):
    trace = _trace_after_constant_gradient(0.999, "bfloat16", _steps(0.999))
  assert trace.max() <= 256
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nag_optax.nesterov(
      0.1, 0.999, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True
    ).init(jnp.zeros(3))
    nag_optax.nesterov(0.1, 0.999).init(jnp.zeros(3, jnp.float32))


def test_stochastic_round_is_unbiased_and_picks_a_neighbour():
  x = jnp.asarray(np.random.default_rng(0).uniform(-3, 3, 64), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 4096)
  rounded = jax.vmap(lambda k: _precision.stochastic_round(x, jnp.bfloat16, k))(keys)
  rounded = np.asarray(rounded.astype(jnp.float32))
  down = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
  spacing = np.abs(
    np.asarray(jnp.nextafter(x.astype(jnp.bfloat16), jnp.inf).astype(jnp.float32))
    - down
  )
  # Each sample is one of the two bf16 neighbours of x ...
  assert np.all(np.abs(rounded - np.asarray(x)) <= spacing)
  # ... and the mean is x to within 5 standard errors of a Bernoulli mean.
  stderr = spacing / 2 / np.sqrt(len(keys))
  assert np.all(np.abs(rounded.mean(0) - np.asarray(x)) <= 5 * stderr + 1e-12)
  # Representable values are left alone.
  exact = x.astype(jnp.bfloat16).astype(jnp.float32)
  np.testing.assert_array_equal(
    _precision.stochastic_round(exact, jnp.bfloat16, keys[0]),
    exact.astype(jnp.bfloat16),
  )


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_state_dtypes_are_stable_and_updates_keep_gradient_dtype(
  param_dtype, stochastic_rounding
):
  tx = nag_optax.nesterov(
    0.1, 0.9, weight_decay=0.01, stochastic_rounding=stochastic_rounding
  )
  params = {"w": jnp.ones((4, 3), param_dtype), "b": jnp.zeros(3, param_dtype)}
  state = tx.init(params)
  spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  update = jax.jit(tx.update)
  for _ in range(3):
    updates, state = update(params, state, params)
    params = optax.apply_updates(params, updates)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec
  assert all(u.dtype == jnp.dtype(param_dtype) for u in jax.tree.leaves(updates))
  assert update._cache_size() == 1


def test_hyperparameters_stay_float32_with_bf16_params():
  """0.999 in bfloat16 is 1.0; the update must use float32 0.999."""
  tx = nag_optax.scale_by_nesterov(0.999, accumulator_dtype=jnp.float32)
  params = jnp.zeros(1, jnp.bfloat16)
  state = tx.init(params)
  grad = jnp.ones(1, jnp.bfloat16)
  for _ in range(3):
    _, state = tx.update(grad, state)
  expected = 1 + 0.999 * (1 + 0.999)  # m_3 with mu = 0.999 exactly (float32)
  np.testing.assert_allclose(np.asarray(state.trace), expected, rtol=1e-6)
  assert state.lookahead.dtype == jnp.float32


@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_eval_params_stay_exact_with_a_bfloat16_buffer(stochastic_rounding):
  """The look-ahead uses the buffer as stored, so theta follows
  theta_{t+1} = theta_t - lr (mu m_t + g_t) with m_t the stored bf16 buffer."""
  lr, mu = 0.1, 0.9
  tx = nag_optax.nesterov(
    lr, mu, accumulator_dtype=jnp.bfloat16, stochastic_rounding=stochastic_rounding
  )
  rng = np.random.default_rng(0)
  params = jnp.asarray(rng.normal(size=64), jnp.float32)
  state = tx.init(params)
  theta = nag_optax.nesterov_eval_params(state, params)
  for _ in range(6):
    grads = jnp.asarray(rng.normal(size=64), jnp.float32)
    stored = state.trace.astype(jnp.float32)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    new_theta = nag_optax.nesterov_eval_params(state, params)
    np.testing.assert_allclose(
      new_theta - theta, -lr * (mu * stored + grads), rtol=1e-5, atol=1e-6
    )
    theta = new_theta


def test_nadam_keeps_the_running_product_in_float32_for_bf16_params():
  tx = nag_optax.nadam(1e-3, momentum_decay=0.5)
  params = jnp.ones(4, jnp.bfloat16)
  state = tx.init(params)
  for _ in range(5):
    updates, state = tx.update(params, state, params)
  assert isinstance(state, nag_optax.ScaleByNadamState)
  assert state.mu_product.dtype == jnp.float32
  assert updates.dtype == jnp.bfloat16
  t = np.arange(1, 6)
  expected = np.prod(0.9 * (1 - 0.5 * 0.96 ** (t * 0.5)))
  np.testing.assert_allclose(float(state.mu_product), expected, rtol=1e-6)
