"""The contract every optimizer of nag_optax keeps (optax's alias_test habits).

The registry is built from ``nag_optax.__all__``: every function whose first
argument is ``learning_rate`` is an optimizer, every ``scale_by_*`` a
direction chained with a learning rate. Anything else exported must be listed
in NOT_OPTIMIZERS, so a new optimizer joins this battery automatically.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import nag_optax
from tests import harness
from tests import numpy_reference as ref

# Exports that are not optimizer factories (states, modules, utilities,
# wrappers of another optimizer, which have their own tests).
NOT_OPTIMIZERS = {
  "accumulate_gradients",
  "accumulation_emitted",
  "accumulation_gradient_step",
  "momentum_schedules",
  "nesterov_eval_params",
  "parallel",
}

# Learning rates where the defaults (quadratic 0.1, Rosenbrock 1e-3) do not fit.
LEARNING_RATES = {
  "nadam": {"quadratic": 0.05, "rosenbrock": 0.01},
  "scale_by_nadam": {"quadratic": 0.05, "rosenbrock": 0.01},
  "adan": {"quadratic": 0.05, "rosenbrock": 0.01},
  "scale_by_adan": {"quadratic": 0.05, "rosenbrock": 0.01},
}

# Extra keyword variants run through the whole battery.
VARIANTS = {
  "nesterov": [
    {"form": "sutskever"},
    {"restart": "gradient"},
    {"weight_decay": 1e-4, "decoupled_weight_decay": True},
    {"stochastic_rounding": True, "accumulator_dtype": "bfloat16"},
  ],
}


def _is_optimizer_factory(name, obj):
  if not inspect.isfunction(obj):
    return False
  params = list(inspect.signature(obj).parameters)
  return name.startswith("scale_by_") or (params and params[0] == "learning_rate")


def _exports():
  return {name: getattr(nag_optax, name) for name in nag_optax.__all__}


def _registry():
  entries = []
  for name, obj in sorted(_exports().items()):
    if not _is_optimizer_factory(name, obj):
      continue
    for variant in [{}, *VARIANTS.get(name, [])]:
      label = name + "".join(f"-{k}={v}" for k, v in variant.items())
      entries.append(pytest.param(name, obj, variant, id=label))
  return entries


REGISTRY = _registry()


def _make(name, factory, variant, lr):
  if name.startswith("scale_by_"):
    return optax.chain(factory(**variant), optax.scale_by_learning_rate(lr))
  return factory(lr, **variant)


def _lr(name, problem):
  return LEARNING_RATES.get(name, {}).get(
    problem, {"quadratic": 0.1, "rosenbrock": 1e-3}[problem]
  )


def test_every_export_is_classified():
  for name, obj in _exports().items():
    if name in NOT_OPTIMIZERS or inspect.isclass(obj) or inspect.ismodule(obj):
      continue
    assert _is_optimizer_factory(name, obj), (
      f"nag_optax.{name} is neither an optimizer factory nor listed in "
      "NOT_OPTIMIZERS: add it to one so the contract battery covers it."
    )
  assert len(REGISTRY) >= 2


PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]), "b": jnp.ones(2)}
TARGET = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), PARAMS)
CURVATURE = {"w": jnp.linspace(0.5, 2.0, 6).reshape(3, 2), "b": jnp.array([1.0, 0.7])}
ROSENBROCK_START = {"xy": jnp.array([-1.2, 1.0])}


def _quadratic(params):
  terms = jax.tree.map(
    lambda p, t, a: 0.5 * jnp.sum(a * (p - t) ** 2), params, TARGET, CURVATURE
  )
  return sum(jax.tree.leaves(terms))


def _rosenbrock(params):
  x, y = params["xy"][0], params["xy"][1]
  return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def _quadratic_grad_np(p):
  return _flat(CURVATURE) * (p - _flat(TARGET))


def _rosenbrock_grad_np(p):
  x, y = p
  return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x**2), 200.0 * (y - x**2)])


PROBLEMS = {
  # name: (loss, NumPy gradient, start, steps, steps compared with NumPy)
  "quadratic": (_quadratic, _quadratic_grad_np, PARAMS, 500, 500),
  # NAdam and Adan end up hovering in the valley with steps of about lr
  # whatever the gradient, where a rounding-level difference can flip a
  # step and the two float64 paths part (measured: from step 1062 for
  # Adan, 4183 for NAdam): the paths are compared well before that.
  "rosenbrock": (_rosenbrock, _rosenbrock_grad_np, ROSENBROCK_START, 6000, 500),
}

# The transcriptions run the same rule in float64 in another order of
# operations: they agree to rounding (measured 3.8e-15 at most over the
# compared steps). A wrong coefficient, bias correction, momentum count or
# sign moves the path by orders of magnitude more.
TRANSCRIPTION_TOL = harness.TIGHT
# With a bfloat16 buffer, stochastic rounding stores each momentum value
# within one bfloat16 ulp, 2^-7 of its size (8 significant bits): the path
# stays within that fraction of the distance it travels (measured 2.9e-3
# and 2.1e-3 on these problems, whose paths travel 3.8 and 2.2).
BFLOAT16_RESOLUTION = 2.0**-7


def _transcription(name, variant, problem, lr):
  """The published rule of a registry entry, in NumPy (tests/numpy_reference.py),
  with ``name``'s defaults: params after each step on ``problem``."""
  _, grad_np, start, steps, _ = PROBLEMS[problem]
  p0, rate = _flat(start), (lambda t: lr)
  rule = name.removeprefix("scale_by_")
  if rule == "nadam":
    return ref.torch_nadam(p0, grad_np, steps, lr)
  if rule == "adan":
    return ref.reference_adan(p0, grad_np, steps, lr)
  assert rule == "nesterov", f"no transcription for {name}: add one here"
  if variant.get("form") == "sutskever":
    return ref.keras_sgd(p0, grad_np, steps, rate, 0.9)
  if variant.get("decoupled_weight_decay"):  # SGDW: Keras' decoupled decay
    return ref.keras_sgd(p0, grad_np, steps, rate, 0.9, variant["weight_decay"])
  restart = variant.get("restart") == "gradient"
  return ref.torch_sgd(p0, grad_np, steps, rate, 0.9, gradient_restart=restart)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_follows_its_published_rule_and_converges(name, factory, variant, problem):
  """In float64, the path is the NumPy transcription's (to rounding, or to
  the buffer's resolution with a bfloat16 buffer), and the loss falls by
  three orders of magnitude on the quadratic, two on Rosenbrock."""
  loss, _, start, steps, compared = PROBLEMS[problem]
  lr = _lr(name, problem)
  start = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), start)
  tx = _make(name, factory, variant, lr)
  records, final, _ = harness.run(tx, start, steps, loss=loss)
  ours = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(records))
  theirs = np.stack(_transcription(name, variant, problem, lr))
  deviation = harness.max_dev(ours[:compared], theirs[:compared])
  if variant.get("accumulator_dtype") == "bfloat16":
    travelled = np.max(np.abs(theirs - _flat(start)))
    assert deviation < BFLOAT16_RESOLUTION * travelled
  else:
    assert deviation < TRANSCRIPTION_TOL
  drop = {"quadratic": 1e-3, "rosenbrock": 1e-2}[problem]
  assert float(loss(final)) < drop * float(loss(start))


def _one_step_inputs(dtype=jnp.float32):
  params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
  grads = jax.tree.map(lambda x: (0.1 * x + 0.05).astype(dtype), PARAMS)
  return params, grads


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_traces_once_and_accepts_unknown_extra_args(name, factory, variant):
  chex.clear_trace_counter()  # counts are kept per code object across cases
  tx = _make(name, factory, variant, 0.1)
  params, grads = _one_step_inputs()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(grads, state, params):
    return tx.update(grads, state, params, value=jnp.float32(1.0), unknown_arg=3)

  state = tx.init(params)
  for _ in range(3):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_same_result_under_inject_hyperparams(name, factory, variant):
  if name.startswith("scale_by_"):
    factory_of_lr = lambda lr, **kw: optax.chain(
      factory(**kw), optax.scale_by_learning_rate(lr)
    )
    injected = optax.inject_hyperparams(factory)(**variant)
    injected = optax.chain(injected, optax.scale_by_learning_rate(0.1))
    plain = factory_of_lr(0.1, **variant)
  else:
    injected = optax.inject_hyperparams(factory)(learning_rate=0.1, **variant)
    plain = factory(0.1, **variant)
  params, grads = _one_step_inputs()
  results = []
  for tx in (plain, injected):
    p, state = params, tx.init(params)
    for _ in range(4):
      updates, state = tx.update(grads, state, p, value=jnp.float32(1.0))
      p = optax.apply_updates(p, updates)
    results.append(p)
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_updates_keep_the_gradient_dtype(name, factory, variant, dtype, request):
  if dtype == "float64":
    request.getfixturevalue("x64")
  tx = _make(name, factory, variant, 0.1)
  params, grads = _one_step_inputs(dtype)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
    params = optax.apply_updates(params, updates)
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.dtype(dtype)
    assert bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_honours_accumulator_dtype(name, factory, variant):
  variant = {**variant, "accumulator_dtype": jnp.bfloat16}
  tx = _make(name, factory, variant, 0.1)
  params, grads = _one_step_inputs()
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
  param_shapes = {x.shape for x in jax.tree.leaves(params)}
  buffers = [
    x
    for x in jax.tree.leaves(state)
    if x.shape in param_shapes and jnp.issubdtype(x.dtype, jnp.floating)
  ]
  assert buffers and all(x.dtype == jnp.bfloat16 for x in buffers)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_state_is_stable_through_lax_cond(name, factory, variant):
  tx = _make(name, factory, variant, 0.1)
  params, grads = _one_step_inputs()
  state = tx.init(params)

  @jax.jit
  def maybe_update(pred, state):
    return jax.lax.cond(
      pred,
      lambda s: s,
      lambda s: tx.update(grads, s, params, value=jnp.float32(1.0))[1],
      state,
    )

  spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  for pred in (False, True, False):
    state = maybe_update(pred, state)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_zero_updates_on_multisteps_micro_steps(name, factory, variant):
  tx = optax.MultiSteps(_make(name, factory, variant, 0.1), every_k_schedule=3)
  params, grads = _one_step_inputs()
  state = tx.init(params)
  for micro in range(6):
    updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
    norm = float(optax.tree.norm(updates))
    if micro % 3 < 2:
      assert norm == 0.0
    else:
      assert norm > 0.0


def _factory_with_lr(name, factory, lr, kwargs, *, inject=False):
  """The optimizer itself (no chain), optionally under inject_hyperparams."""
  if inject:
    factory = optax.inject_hyperparams(factory)
  if name.startswith("scale_by_"):
    return factory(**kwargs)
  return factory(learning_rate=lr, **kwargs)


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_same_state_structure_under_inject_hyperparams(name, factory, variant):
  """inject_hyperparams turns every number into an array, weight_decay=0.0
  included: the inner state must not change structure for that."""
  params, _ = _one_step_inputs()
  decays = [{}]
  if "weight_decay" in inspect.signature(factory).parameters:
    decays += [{"weight_decay": 0.0}, {"weight_decay": 1e-3}]
  structures = set()
  for decay in decays:
    kwargs = {**variant, **decay}
    plain = _factory_with_lr(name, factory, 0.1, kwargs)
    injected = _factory_with_lr(name, factory, 0.1, kwargs, inject=True)
    structures.add(jax.tree.structure(plain.init(params)))
    structures.add(jax.tree.structure(injected.init(params).inner_state))
  assert len(structures) == 1, structures


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_refuses_a_non_float_accumulator_dtype(name, factory, variant):
  for bad in (jnp.int32, jnp.bool_, "complex64"):
    with pytest.raises(ValueError, match="accumulator_dtype must be a float dtype"):
      _make(name, factory, {**variant, "accumulator_dtype": bad}, 0.1)


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_swapped_update_arguments_are_named(name, factory, variant):
  tx = _factory_with_lr(name, factory, 0.1, variant)
  params, grads = _one_step_inputs()
  state = tx.init(params)
  value = jnp.float32(1.0)
  swapped = "state argument of update is a .*are the arguments swapped"
  with pytest.raises(ValueError, match=swapped):
    tx.update(grads, params, state, value=value)
  with pytest.raises(ValueError, match=swapped):
    tx.update(state, grads, value=value)


@pytest.mark.parametrize("name,factory,variant", REGISTRY)
def test_mismatched_params_are_named(name, factory, variant):
  """Also where the optimizer does not otherwise read the params."""
  tx = _factory_with_lr(name, factory, 0.1, variant)
  params, grads = _one_step_inputs()
  state = tx.init(params)
  value = jnp.float32(1.0)
  with pytest.raises(ValueError, match="params tree does not match the gradient"):
    tx.update(grads, state, {"w": params["w"]}, value=value)
  with pytest.raises(ValueError, match=r"params leaf at \['b'\] has shape \(3,\)"):
    tx.update(grads, state, {**params, "b": jnp.zeros(3)}, value=value)
  with pytest.raises(ValueError, match="gradient tree does not match"):
    tx.update({"w": grads["w"]}, state, value=value)
