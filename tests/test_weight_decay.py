"""Weight decay, one piece for nesterov, nadam and adan: its forms and masks.

Every optimizer runs on a nested tree of three independent leaves; each leaf
must follow the NumPy transcription of the published rule, with the decay
where the mask says and without it elsewhere, whatever kind of mask selects
them (a full tree, a prefix tree, a callable returning either).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from tests import numpy_reference as ref
from tests.harness import P0
from tests.harness import STEPS
from tests.harness import TIGHT
from tests.harness import grad_jnp
from tests.harness import grad_np
from tests.harness import max_dev
from tests.harness import trajectory

WD = 0.1
PARAMS = {"encoder": {"w": P0, "b": P0[::-1].copy()}, "decoder": {"w": 0.5 * P0}}
LEAVES = ("encoder.w", "encoder.b", "decoder.w")

# name: (mask, the leaves it decays)
MASKS = {
  "tree": (
    {"encoder": {"w": True, "b": False}, "decoder": {"w": True}},
    {"encoder.w", "decoder.w"},
  ),
  "prefix": ({"encoder": True, "decoder": False}, {"encoder.w", "encoder.b"}),
  "callable": (
    # Every leaf named "w", chosen from the tree's paths (masks are static).
    lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "w", p),
    {"encoder.w", "decoder.w"},
  ),
  "callable-prefix": (lambda p: {"encoder": False, "decoder": True}, {"decoder.w"}),
  "none": (None, set(LEAVES)),
}

# name: (factory of (weight_decay, mask), NumPy reference of (p0, weight_decay))
OPTIMIZERS = {
  "nesterov-coupled": (
    lambda wd, mask: nag_optax.nesterov(
      0.05, 0.9, weight_decay=wd, weight_decay_mask=mask
    ),
    lambda p0, wd: ref.torch_sgd(p0, grad_np, STEPS, lambda t: 0.05, 0.9, 0.0, wd),
  ),
  "nesterov-decoupled": (
    lambda wd, mask: nag_optax.nesterov(
      0.05,
      0.9,
      form="sutskever",
      weight_decay=wd,
      decoupled_weight_decay=True,
      weight_decay_mask=mask,
    ),
    lambda p0, wd: ref.keras_sgd(p0, grad_np, STEPS, lambda t: 0.05, 0.9, wd),
  ),
  "nadam-coupled": (
    lambda wd, mask: nag_optax.nadam(0.02, weight_decay=wd, weight_decay_mask=mask),
    lambda p0, wd: ref.torch_nadam(p0, grad_np, STEPS, 0.02, weight_decay=wd),
  ),
  "nadam-decoupled": (
    lambda wd, mask: nag_optax.nadam(
      0.02, weight_decay=wd, decoupled_weight_decay=True, weight_decay_mask=mask
    ),
    lambda p0, wd: ref.torch_nadam(
      p0, grad_np, STEPS, 0.02, weight_decay=wd, decoupled_weight_decay=True
    ),
  ),
  "adan-proximal": (
    lambda wd, mask: nag_optax.adan(0.01, weight_decay=wd, weight_decay_mask=mask),
    lambda p0, wd: ref.reference_adan(p0, grad_np, STEPS, 0.01, weight_decay=wd),
  ),
  "adan-decoupled": (
    lambda wd, mask: nag_optax.adan(
      0.01, weight_decay=wd, no_prox=True, weight_decay_mask=mask
    ),
    lambda p0, wd: ref.reference_adan(
      p0, grad_np, STEPS, 0.01, weight_decay=wd, no_prox=True
    ),
  ),
}


def _leaf(tree, path):
  outer, inner = path.split(".")
  return tree[outer][inner]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_masked_decay_follows_the_published_rule_leaf_by_leaf(optimizer, mask_kind):
  make, reference = OPTIMIZERS[optimizer]
  mask, decayed = MASKS[mask_kind]
  ours, _ = trajectory(
    make(WD, mask), grad=lambda p: jax.tree.map(grad_jnp, p), p0=PARAMS
  )
  for path in LEAVES:
    p0 = _leaf(PARAMS, path)
    with_decay, without = reference(p0, WD), reference(p0, 0.0)
    expected, other = (
      (with_decay, without) if path in decayed else (without, with_decay)
    )
    assert max_dev(_leaf(ours, path), expected) < TIGHT, path
    assert max_dev(_leaf(ours, path), other) > 1e-4, path  # the mask mattered


FACTORIES = {
  "nesterov": nag_optax.nesterov,
  "nadam": nag_optax.nadam,
  "adan": nag_optax.adan,
}


def _one_update(tx, *, pass_params=True):
  params = jax.tree.map(jnp.asarray, PARAMS)
  if pass_params:
    return tx.update(params, tx.init(params), params)
  return tx.update(params, tx.init(params))


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_a_mask_that_does_not_fit_the_params_is_named(factory):
  for mask in (
    {"encoder": True},  # a key missing
    {"encoder": {"w": True, "b": {"x": True}}, "decoder": True},  # too deep
    lambda p: {"encoder": True},
  ):
    tx = FACTORIES[factory](0.1, weight_decay=WD, weight_decay_mask=mask)
    with pytest.raises(ValueError, match="weight_decay_mask must be .* a prefix"):
      _one_update(tx)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_a_mask_of_non_booleans_fails_at_construction(factory):
  for mask in ({"encoder": 1.0, "decoder": True}, jnp.array([True, False])):
    with pytest.raises(ValueError, match="weight_decay_mask must be"):
      FACTORIES[factory](0.1, weight_decay=WD, weight_decay_mask=mask)


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_decay_without_the_params_is_named(factory):
  tx = FACTORIES[factory](0.1, weight_decay=WD)
  with pytest.raises(ValueError, match="weight_decay needs the parameters"):
    _one_update(tx, pass_params=False)
  _one_update(FACTORIES[factory](0.1), pass_params=False)  # no decay: optional


@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_an_injected_zero_decay_changes_nothing(factory):
  """inject_hyperparams passes weight_decay=0.0 as an array: the term stays
  in the graph (it cannot be known to be zero) but adds exactly nothing."""
  injected = optax.inject_hyperparams(FACTORIES[factory])(
    learning_rate=0.1, weight_decay=0.0
  )
  ours, _ = _one_update(injected)
  plain, _ = _one_update(FACTORIES[factory](0.1))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_mask_computed_from_values_is_refused_with_the_reason():
  tx = nag_optax.nesterov(
    0.1,
    weight_decay=WD,
    weight_decay_mask=lambda p: jax.tree.map(lambda x: x[0] < 0, p),
  )
  params = jax.tree.map(jnp.asarray, PARAMS)
  with pytest.raises(ValueError, match="weight_decay_mask .* concrete booleans"):
    jax.jit(tx.update)(params, tx.init(params), params)
