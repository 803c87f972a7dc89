"""Weight decay for every optimizer: coupled, decoupled or proximal, masked.

One :class:`WeightDecay` describes an optimizer's decay at construction; the
core (:mod:`nag_optax._core`) applies it around the optimizer's own step:
the coupled form to the gradient before the step, the decoupled and proximal
forms to the signed update after it. It holds no state, so an optimizer's
state is the same whether ``weight_decay`` is a literal zero (the term is
then left out of the graph) or an array (what ``optax.inject_hyperparams``
passes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nag_optax import _precision
from nag_optax import _validation

MODES = ("coupled", "decoupled", "proximal")

LeafMask = optax.Updates
"""Python bools in the structure of the updates: True where a leaf decays."""

_MASK_KINDS = (
  "a tree of booleans with the structure of params, a prefix of it (e.g. "
  "{'encoder': True, 'decoder': False} over nested params), or a callable "
  "of params returning one"
)


def _as_bool(leaf: object) -> bool:
  """A mask leaf as a Python bool; anything but a concrete boolean fails."""
  if isinstance(leaf, (bool, np.bool_)):
    return bool(leaf)
  if isinstance(leaf, jax.core.Tracer):
    raise TypeError(
      "mask leaves must be concrete booleans (they choose leaves when the "
      "update is traced), got a traced array: compute the mask from the "
      "params' structure, shapes or dtypes, not their values"
    )
  if isinstance(leaf, (np.ndarray, jax.Array)) and leaf.dtype == np.bool_:
    if leaf.shape == ():
      return bool(leaf)
  raise TypeError(f"mask leaves must be booleans, got {leaf!r}")


class WeightDecay:
  """One optimizer's weight decay: rate, form and mask, fixed at construction.

  Forms, with :math:`\\lambda` = ``rate``, :math:`\\alpha_t` the learning rate,
  :math:`u_t` the update before decay and :math:`p` the parameters:

  * ``"coupled"`` (L2): :math:`g_t \\leftarrow g_t + \\lambda p` before the
    optimizer's step (PyTorch's ``weight_decay``).
  * ``"decoupled"``: :math:`u_t \\leftarrow u_t - \\alpha_t \\lambda p`
    (SGDW, AdamW; Adan's ``no_prox=True``).
  * ``"proximal"``: :math:`u_t \\leftarrow (u_t - \\alpha_t \\lambda p) / (1 +
    \\alpha_t \\lambda)`, i.e. :math:`p \\leftarrow (p + u_t) / (1 + \\alpha_t
    \\lambda)` (Adan's default).

  All three are linear in :math:`p`, so they hold for complex parameters as
  they are. Leaves where the mask is False are not decayed at all.
  """

  def __init__(
    self, rate: jax.typing.ArrayLike, *, mode: str, mask: optax.MaskOrFn = None
  ):
    _validation.check_interval("weight_decay", rate, 0.0)
    _validation.check_choice("weight decay mode", mode, MODES)
    if mask is not None and not callable(mask):
      try:
        for leaf in jax.tree.leaves(mask):
          _as_bool(leaf)
      except TypeError as error:
        raise ValueError(f"weight_decay_mask must be {_MASK_KINDS}: {error}.") from None
    self.rate = rate
    self.mode = mode
    self.mask = mask
    self.active = not _validation.is_static_zero(rate)

  def mask_tree(
    self, params: optax.Params | None, updates: optax.Updates
  ) -> LeafMask | None:
    """Which leaves decay: a tree of Python bools like ``updates``.

    None when there is no decay. Raises a ValueError naming the argument
    when the parameters are missing or the mask does not fit them.
    """
    if not self.active:
      return None
    if params is None:
      raise ValueError(
        "weight_decay needs the parameters: call update(grads, state, params)."
      )
    mask = self.mask(params) if callable(self.mask) else self.mask
    if mask is None:
      return jax.tree.map(lambda _: True, updates)
    try:
      return jax.tree.map(
        lambda m, subtree: jax.tree.map(lambda _: _as_bool(m), subtree),
        mask,
        updates,
      )
    except (TypeError, ValueError) as error:
      raise ValueError(
        f"weight_decay_mask must be {_MASK_KINDS}; it does not fit the params: {error}"
      ) from error

  def _rate(self) -> jax.Array:
    return jnp.asarray(self.rate, _precision.scalar_dtype())

  def decayed_gradient(
    self, grads: optax.Updates, params: optax.Params | None, mask: LeafMask | None
  ) -> optax.Updates:
    """The coupled form: :math:`g + \\lambda p` on the masked leaves."""
    if mask is None or self.mode != "coupled":
      return grads
    rate = self._rate()

    def decay(g, p, on):
      if not on:
        return g
      return g + _precision.cast_scalar(rate, g) * p.astype(g.dtype)

    return jax.tree.map(decay, grads, params, mask)

  def decayed_update(
    self,
    updates: optax.Updates,
    params: optax.Params | None,
    mask: LeafMask | None,
    learning_rate: jax.Array,
  ) -> optax.Updates:
    """The decoupled or proximal form, on the signed update."""
    if mask is None or self.mode == "coupled":
      return updates
    step = learning_rate * self._rate()

    def decay(u, p, on):
      if not on:
        return u
      s = _precision.cast_scalar(step, u)
      u = u - s * p.astype(u.dtype)
      return u / (1.0 + s) if self.mode == "proximal" else u

    return jax.tree.map(decay, updates, params, mask)


NO_DECAY = WeightDecay(0.0, mode="coupled")
