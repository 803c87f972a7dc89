"""Bad inputs fail early, with an error that names them and says what to do.

Grouped by where the input enters: the optimizer's arguments, its
schedules, the parameters given to ``init``, and the state given to
``update``. Everything runs eagerly except where ``jit`` is the point.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax

OPTIMIZERS = {
  "nesterov": nag_optax.nesterov,
  "nadam": nag_optax.nadam,
  "adan": nag_optax.adan,
}
DIRECTIONS = {
  "scale_by_nesterov": nag_optax.scale_by_nesterov,
  "scale_by_nadam": nag_optax.scale_by_nadam,
  "scale_by_adan": nag_optax.scale_by_adan,
}


def _params():
  return {"w": jnp.ones((4, 1)), "b": jnp.full((2,), -2.0)}


def _grads():
  return {"w": jnp.full((4, 1), 0.5), "b": jnp.array([1.0, -3.0])}


# Optimizer arguments.


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_learning_rate_none_is_refused(name):
  with pytest.raises(
    ValueError, match=rf"{name}: learning_rate .* got None.*scale_by_{name}"
  ):
    OPTIMIZERS[name](None)
  with pytest.raises(ValueError, match=rf"{name}: learning_rate .* got None"):
    OPTIMIZERS[name](learning_rate=None)


NONE_HYPERPARAMETERS = [
  ("nesterov", "momentum"),
  ("nesterov", "dampening"),
  ("nesterov", "weight_decay"),
  ("nesterov", "seed"),
  ("scale_by_nesterov", "momentum"),
  ("scale_by_nesterov", "dampening"),
  ("scale_by_nesterov", "seed"),
  ("nadam", "b1"),
  ("nadam", "b2"),
  ("nadam", "eps"),
  ("nadam", "momentum_decay"),
  ("nadam", "weight_decay"),
  ("scale_by_nadam", "b1"),
  ("scale_by_nadam", "b2"),
  ("scale_by_nadam", "eps"),
  ("scale_by_nadam", "momentum_decay"),
  ("adan", "b1"),
  ("adan", "b2"),
  ("adan", "b3"),
  ("adan", "eps"),
  ("adan", "weight_decay"),
  ("adan", "max_grad_norm"),
  ("scale_by_adan", "b1"),
  ("scale_by_adan", "b2"),
  ("scale_by_adan", "b3"),
  ("scale_by_adan", "eps"),
  ("scale_by_adan", "max_grad_norm"),
]


def _make(name, **kwargs):
  if name in OPTIMIZERS:
    return OPTIMIZERS[name](kwargs.pop("learning_rate", 0.1), **kwargs)
  return DIRECTIONS[name](**kwargs)


@pytest.mark.parametrize("name,arg", NONE_HYPERPARAMETERS)
def test_none_hyperparameter_is_refused_at_construction(name, arg):
  with pytest.raises(ValueError, match=rf"^{arg} must be .*got None"):
    _make(name, **{arg: None})


@pytest.mark.parametrize("name,arg", [("nadam", "b2"), ("adan", "eps")])
def test_callable_constant_hyperparameter_is_refused(name, arg):
  with pytest.raises(ValueError, match=rf"^{arg} must be .*inject_hyperparams"):
    _make(name, **{arg: lambda count: 0.5})


def test_every_k_schedule_none_is_refused():
  with pytest.raises(ValueError, match="every_k_schedule must be a positive"):
    nag_optax.accumulate_gradients(nag_optax.nesterov(0.1), None)


def test_documented_none_arguments_still_work():
  tx = nag_optax.nesterov(
    0.1,
    0.9,
    restart=None,
    restart_every=None,
    accumulator_dtype=None,
    weight_decay_mask=None,
  )
  params, grads = _params(), _grads()
  updates, _ = tx.update(grads, tx.init(params), params)
  # First step: m = g, update = -lr (g + mu m) = -0.19 g.
  for key in params:
    np.testing.assert_allclose(updates[key], -0.19 * np.asarray(grads[key]), 1e-6)


# Schedules.

SCHEDULED = [
  ("nesterov", "learning_rate"),
  ("nesterov", "momentum"),
  ("scale_by_nesterov", "momentum"),
  ("nadam", "learning_rate"),
  ("adan", "learning_rate"),
]


@pytest.mark.parametrize("name,arg", SCHEDULED)
def test_non_scalar_schedule_is_refused_at_construction(name, arg):
  with pytest.raises(
    ValueError, match=rf"^{arg} schedule must return a scalar, got shape \(3,\)"
  ):
    _make(name, **{arg: lambda count: jnp.ones(3) * 0.1})


def test_schedule_returning_a_tree_is_refused():
  with pytest.raises(ValueError, match="^learning_rate schedule must return a"):
    nag_optax.nesterov(lambda count: {"lr": 0.1})


def _concrete_only(value):
  """A schedule that needs a concrete count: it cannot be probed abstractly."""
  return lambda count: value if int(count) >= 0 else 0.0


@pytest.mark.parametrize("arg", ["learning_rate", "momentum"])
def test_non_scalar_schedule_is_named_at_update(arg):
  tx = _make("nesterov", **{arg: _concrete_only(np.full(3, 0.1))})
  params = _params()
  state = tx.init(params)
  with pytest.raises(ValueError, match=rf"^{arg} schedule must return a scalar"):
    tx.update(_grads(), state, params)


def test_scalar_schedules_still_work():
  tx = nag_optax.nesterov(_concrete_only(0.1), _concrete_only(0.9))
  params, grads = _params(), _grads()
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["b"], -0.19 * np.asarray(grads["b"]), 1e-6)


def test_injected_hyperparameters_still_work_under_jit():
  tx = optax.inject_hyperparams(nag_optax.nesterov)(
    learning_rate=optax.linear_schedule(0.1, 0.0, 10),
    momentum=optax.constant_schedule(0.9),
  )
  params, grads = _params(), _grads()
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["b"], -0.19 * np.asarray(grads["b"]), 1e-6)


def test_injected_non_scalar_hyperparameter_is_named_under_jit():
  tx = optax.inject_hyperparams(nag_optax.nesterov)(learning_rate=0.1)
  params = _params()
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.full(3, 0.1)
  with pytest.raises(ValueError, match=r"^learning_rate must be a scalar.*\(3,\)"):
    jax.jit(tx.update)(_grads(), state, params)


# Parameters given to init.


@pytest.mark.parametrize("name", sorted(OPTIMIZERS) + sorted(DIRECTIONS))
def test_integer_params_are_refused_at_init(name):
  tx = _make(name)
  params = {"w": jnp.ones(2), "n": {"k": jnp.zeros(3, jnp.int32)}}
  with pytest.raises(
    TypeError,
    match=rf"^{name}: parameter at \['n'\]\['k'\] has integer dtype int32; "
    r".*floating-point .*optax\.masked",
  ):
    tx.init(params)


def test_boolean_and_bare_integer_params_are_refused():
  tx = nag_optax.nesterov(0.1)
  with pytest.raises(TypeError, match=r"^nesterov: parameter has integer dtype"):
    tx.init(jnp.arange(3))
  with pytest.raises(TypeError, match=r"parameter at \['flag'\] has dtype bool"):
    tx.init({"flag": jnp.array(True)})


def test_masked_integer_params_are_fine():
  tx = optax.masked(nag_optax.nadam(0.1), {"w": True, "n": False})
  params = {"w": jnp.ones(2), "n": jnp.zeros((), jnp.int32)}
  grads = {"w": jnp.array([1.0, -1.0]), "n": jnp.zeros((), jnp.int32)}
  updates, _ = tx.update(grads, tx.init(params), params)
  # NAdam's first step moves each coordinate by about lr against its sign.
  np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=0.1)
  assert updates["n"].dtype == jnp.int32


# States given to update.


def test_inner_state_passed_to_accumulate_gradients_is_named():
  inner = nag_optax.nesterov(0.1)
  tx = nag_optax.accumulate_gradients(inner, 2)
  params, grads = _params(), _grads()
  inner_state = inner.init(params)
  expected = (
    r"accumulate_gradients: the state argument of update is a "
    r"ScaleByNesterovState, not the AccumulateGradientsState .*inner_opt_state"
  )
  with pytest.raises(ValueError, match=expected):
    tx.update(grads, inner_state, params)
  with pytest.raises(ValueError, match=expected):
    tx.accumulate(grads, inner_state, params)
  with pytest.raises(ValueError, match=expected):
    tx.emit(grads, inner_state, params)


def test_stochastic_rounding_in_an_empty_multi_transform_group():
  rounded = nag_optax.nesterov(
    0.1,
    0.9,
    accumulator_dtype=jnp.bfloat16,
    stochastic_rounding=True,
    seed=3,
  )
  tx = optax.multi_transform(
    {"nag": rounded, "sgd": optax.sgd(0.1)}, {"w": "sgd", "b": "sgd"}
  )
  params = _params()
  state = tx.init(params)
  nag_state = state.inner_states["nag"].inner_state
  assert jax.tree.leaves(nag_state.trace) == []
  for step in range(2):
    grads = jax.tree.map(lambda g: (step + 1.0) * g, _grads())
    updates, state = tx.update(grads, state, params)
    for key in params:
      np.testing.assert_allclose(updates[key], -0.1 * np.asarray(grads[key]), 1e-6)
    params = optax.apply_updates(params, updates)
  nag_state = state.inner_states["nag"].inner_state
  assert int(nag_state.count) == 2
  assert jax.tree.leaves(nag_state.trace) == []


def test_stochastic_rounding_with_no_params():
  tx = nag_optax.nesterov(
    0.1, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True, seed=3
  )
  state = tx.init({})
  updates, new_state = tx.update({}, state, {})
  assert updates == {}
  assert new_state.trace == {}
  assert int(new_state.count) == 1
