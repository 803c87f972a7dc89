"""Dtype rules and stochastic rounding for low-precision optimizer state."""

import jax
import jax.numpy as jnp
import optax


def compute_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
  """The dtype update arithmetic runs in: float32, or wider if ``dtype`` is.

  Complex dtypes stay complex (complex64 or wider).
  """
  return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
  """The real dtype of the same precision: float32 for complex64."""
  return jnp.finfo(dtype).dtype


def cast_scalar(x: jax.Array, like: jax.Array) -> jax.Array:
  """A scalar hyperparameter in the real dtype of ``like``'s arithmetic."""
  return x.astype(real_dtype(like.dtype))


def upcast(tree: optax.Updates) -> optax.Updates:
  """Every leaf in its :func:`compute_dtype`: the one upcast of an update."""
  return jax.tree.map(lambda x: x.astype(compute_dtype(x.dtype)), tree)


def abs_sq(x: jax.Array) -> jax.Array:
  """:math:`|x|^2`, real: ``x * x`` for real ``x`` (the same HLO as ``x**2``)."""
  if jnp.iscomplexobj(x):
    return (x.conj() * x).real
  return x * x


def zeros_like(
  params: optax.Params,
  accumulator_dtype: jax.typing.DTypeLike | None,
  *,
  real: bool = False,
) -> optax.Updates:
  """Zero buffers like ``params``, in ``accumulator_dtype`` (None: the params').

  A complex leaf keeps a complex buffer of the requested precision
  (float32 -> complex64, float64 -> complex128), or with ``real=True`` (a
  second moment, which is real) the real dtype of its precision. There is no
  complex bfloat16 or float16: asking for one is a ValueError.
  """

  def zeros(p):
    dtype = jnp.result_type(p) if accumulator_dtype is None else accumulator_dtype
    if jnp.iscomplexobj(p):
      dtype = real_dtype(dtype)
      if jnp.finfo(dtype).bits < 32:
        raise ValueError(
          f"accumulator_dtype={dtype.name} cannot hold the state of complex "
          "parameters (there is no complex type that narrow): use float32, "
          "float64 or None."
        )
      if not real:
        dtype = jnp.promote_types(dtype, jnp.complex64)
    return jnp.zeros_like(p, dtype=dtype)

  return jax.tree.map(zeros, params)


def scalar_dtype() -> jnp.dtype:
  """Dtype of scalar hyperparameter records in optimizer states.

  float32, or float64 when ``jax_enable_x64`` is on, so that states never hold
  a hyperparameter narrower than float32 (optax issue #1414).
  """
  return jnp.dtype(jnp.result_type(float))


def is_narrower_than_float32(dtype: jax.typing.DTypeLike) -> bool:
  return jnp.finfo(dtype).bits < 32


def stochastic_round(
  x: jax.Array, dtype: jax.typing.DTypeLike, key: jax.Array
) -> jax.Array:
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
