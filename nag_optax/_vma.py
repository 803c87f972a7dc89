"""Which mesh axes a value varies along inside ``jax.shard_map``."""

from collections.abc import Hashable

import jax


def varying_axes(x: jax.typing.ArrayLike | jax.ShapeDtypeStruct) -> frozenset[Hashable]:
  """Mesh axes along which ``x`` varies inside ``shard_map`` (else empty).

  Outside ``shard_map`` (and under ``jax.pmap``, which does not track it)
  the set is empty.
  """
  aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", None) or ())  # jax < 0.10


def vary(x: jax.Array, axes: frozenset[Hashable]) -> jax.Array:
  """``x`` cast to vary along ``axes`` as well (free at run time)."""
  missing = axes - varying_axes(x)
  if not missing:
    return x
  return jax.lax.pcast(x, tuple(sorted(missing, key=str)), to="varying")
