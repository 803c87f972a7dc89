"""Dtype rules and stochastic rounding for low-precision optimizer state."""

from typing import Any

import jax
import jax.numpy as jnp


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The dtype update arithmetic runs in: float32, or wider if ``dtype`` is."""
  return jnp.promote_types(dtype, jnp.float32)


def scalar_dtype() -> jnp.dtype:
  """Dtype of scalar hyperparameter records in optimizer states.

  float32, or float64 when ``jax_enable_x64`` is on, so that states never hold
  a hyperparameter narrower than float32 (optax issue #1414).
  """
  return jnp.dtype(jnp.result_type(float))


def is_narrower_than_float32(dtype: Any) -> bool:
  return jnp.finfo(dtype).bits < 32


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
  r"""Rounds ``x`` to ``dtype`` at random between its two neighbours, unbiased.

  With ``lo <= x <= hi`` the two representable neighbours, the result is ``hi``
  with probability ``(x - lo) / (hi - lo)``, so ``E[round(x)] = x``: small
  increments survive on average instead of being rounded away, which is what
  stalls a bfloat16 momentum buffer (Gupta et al., Deep Learning with Limited
  Numerical Precision, 2015, https://arxiv.org/abs/1502.02551). Values already
  representable, infinities and NaNs round to nearest.

  Args:
    x: values in a wider floating dtype.
    dtype: the narrower floating dtype to store them in.
    key: a PRNG key.

  Returns:
    ``x`` rounded to ``dtype``.
  """
  dtype = jnp.dtype(dtype)
  if jnp.finfo(dtype).bits >= jnp.finfo(x.dtype).bits:
    return x.astype(dtype)
  nearest = x.astype(dtype)
  nearest_wide = nearest.astype(x.dtype)
  toward_x = jnp.where(nearest_wide < x, jnp.inf, -jnp.inf).astype(dtype)
  other = jnp.nextafter(nearest, toward_x)
  gap = other.astype(x.dtype) - nearest_wide
  p_other = jnp.where(gap != 0, (x - nearest_wide) / gap, 0.0)
  uniform = jax.random.uniform(key, x.shape, x.dtype)
  return jnp.where(uniform < p_other, other, nearest)
