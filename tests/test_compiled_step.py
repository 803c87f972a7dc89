"""The compiled update step makes no pass over the parameters beyond optax's.

Not a timing (speed is measured in benchmarks/update_step.py): XLA's
optimized HLO of a jitted, donated ``update`` + ``apply_updates``, read for
what costs memory traffic: array fusions, array copies, and the bytes XLA's
cost analysis counts, against ``optax.sgd(nesterov=True)`` on the same tree.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax

TREES = {
  "1 leaf": [(100_000,)],
  "20 leaves": [(5_000,)] * 10 + [(50, 100)] * 10,
}


def _compiled(tx, shapes):
  params = {f"p{i:02d}": jnp.ones(s) for i, s in enumerate(shapes)}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
  compiled = compiled.compile()
  text = compiled.as_text()
  entry = text[text.find("ENTRY") :]
  array_op = r"= \w+\[[^\]]+\]\S* {}\("
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {
    "fusions": len(re.findall(array_op.format("fusion"), entry)),
    "copies": len(re.findall(array_op.format("copy"), entry)),
    "bytes": cost["bytes accessed"],
    "n_params": sum(int(np.prod(s)) for s in shapes),
  }


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize(
  "variant",
  [{}, {"form": "sutskever"}, {"accumulator_dtype": jnp.bfloat16}],
  ids=["pytorch", "sutskever", "bf16"],
)
def test_nesterov_step_is_no_heavier_than_optax_sgd(variant, tree):
  acc = variant.get("accumulator_dtype")
  ours = _compiled(nag_optax.nesterov(1e-3, 0.9, **variant), TREES[tree])
  theirs = _compiled(
    optax.sgd(1e-3, 0.9, nesterov=True, accumulator_dtype=acc), TREES[tree]
  )
  assert ours["fusions"] <= theirs["fusions"]
  assert ours["copies"] <= theirs["copies"]
  # The scalar bookkeeping (counts, look-ahead, restart fields, key) is a
  # few dozen bytes; anything per parameter would be 2+ bytes each.
  assert ours["bytes"] <= theirs["bytes"] + 100
