"""NAdam and Adan against NumPy transcriptions of PyTorch and the Adan reference."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import _adan
from nag_optax import _nadam
from tests import harness
from tests import numpy_reference as ref
from tests.harness import P0
from tests.harness import STEPS
from tests.harness import TIGHT
from tests.harness import grad_np
from tests.harness import max_dev
from tests.harness import trajectory
from tests.torch_import import import_torch

pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"weight_decay": 0.05},
    {"weight_decay": 0.05, "decoupled_weight_decay": True},
    {"momentum_decay": 0.5, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
  ],
)
def test_nadam_matches_torch_nadam_transcription(kwargs):
  ours, _ = trajectory(nag_optax.nadam(0.02, **kwargs))
  betas = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
  theirs = ref.torch_nadam(P0, grad_np, STEPS, 0.02, betas=betas, **kwargs)
  assert max_dev(ours, theirs) < TIGHT


def test_nadam_with_infinite_momentum_decay_is_optax_nadam():
  ours, _ = trajectory(nag_optax.nadam(0.02, momentum_decay=float("inf")))
  theirs, _ = trajectory(optax.nadam(0.02))
  assert max_dev(ours, theirs) < TIGHT
  # ... and the default psi is not (the schedule is what PyTorch adds).
  default, _ = trajectory(nag_optax.nadam(0.02))
  assert max_dev(default, theirs) > 1e-3


@pytest.mark.torch
@pytest.mark.parametrize("decoupled", [False, True])
def test_nadam_matches_torch_itself(decoupled):
  torch = import_torch()
  # NAdam keeps mu_product and step as default-dtype tensors: use float64.
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    hessian = torch.tensor(harness.HESSIAN)
    p = torch.tensor(P0, requires_grad=True)
    opt = torch.optim.NAdam(
      [p], lr=0.02, weight_decay=0.05, decoupled_weight_decay=decoupled
    )
    theirs = []
    for _ in range(STEPS):
      opt.zero_grad()
      (0.5 * p @ hessian @ p + torch.cos(p).sum()).backward()
      opt.step()
      theirs.append(p.detach().numpy().copy())
  finally:
    torch.set_default_dtype(default_dtype)
  ours, _ = trajectory(
    nag_optax.nadam(0.02, weight_decay=0.05, decoupled_weight_decay=decoupled)
  )
  assert max_dev(ours, theirs) < TIGHT


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"weight_decay": 0.02},
    {"weight_decay": 0.02, "no_prox": True},
    {"max_grad_norm": 0.5, "weight_decay": 0.02},
    {"b1": 0.9, "b2": 0.8, "b3": 0.95, "eps": 1e-6},
  ],
)
def test_adan_matches_the_reference_implementation(kwargs):
  ours, _ = trajectory(nag_optax.adan(0.01, **kwargs))
  betas = tuple(kwargs.pop(b, d) for b, d in (("b1", 0.98), ("b2", 0.92), ("b3", 0.99)))
  theirs = ref.reference_adan(P0, grad_np, STEPS, 0.01, betas=betas, **kwargs)
  assert max_dev(ours, theirs) < TIGHT


def test_where_and_by_how_much_optax_adan_departs_from_the_reference():
  """optax 0.2.8 uses (1 - b2) for b2 in both Nesterov terms of Adan."""
  theirs = np.stack(ref.reference_adan(P0, grad_np, STEPS, 0.01))
  ours, _ = trajectory(nag_optax.adan(0.01))
  assert max_dev(ours, theirs) < TIGHT
  # Where: with its eps_root off, optax.adan is the reference with 1 - b2 in
  # place of b2 in the two Nesterov terms, to float64 round-off.
  optax_adan, _ = trajectory(optax.adan(0.01, eps_root=0.0))
  optax_rule = ref.reference_adan(P0, grad_np, STEPS, 0.01, nesterov_coef=1 - 0.92)
  assert max_dev(optax_adan, optax_rule) < TIGHT
  # From when and by how much: step 1 agrees (Delta_1 = 0 hides the wrong
  # coefficient), then the gap opens at step 2 and grows. Measured (lr 0.01,
  # params moving 0.40 in 40 steps): 1.86e-6 at step 2, 2.09e-4 at step 40.
  per_step = np.max(np.abs(np.asarray(optax_adan) - theirs), axis=1)
  assert per_step[0] < TIGHT
  assert 1e-6 < per_step[1] < 1e-5
  assert 1e-4 < per_step[-1] < 1e-3
  assert per_step[-1] > 50 * per_step[1]
  # optax's default eps_root = 1e-8 under the square root adds a second,
  # smaller departure, present from step 1 (measured 1.5e-9 there).
  default, _ = trajectory(optax.adan(0.01))
  first = np.max(np.abs(np.asarray(default)[0] - theirs[0]))
  assert 1e-10 < first < 1e-8


def test_adan_state_is_no_larger_than_the_references_four_buffers():
  params = {"w": jnp.ones((7, 3)), "b": jnp.ones(3)}
  state = nag_optax.adan(1e-3, weight_decay=0.01).init(params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_state = sum(x.size for x in jax.tree.leaves(state))
  assert n_state <= 4 * n_params + 16  # four buffers plus a few scalars


@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_adan_restart_fires_and_keeps_converging(scheme):
  def run(restart):  # f(x) per step: Adan has no look-ahead point
    tx = nag_optax.adan(0.05, restart=restart)
    return harness.quadratic(tx, 100, 600, point=lambda state, x: x)

  plain, _, _ = run(None)
  restarted, f0, state = run(scheme)
  assert isinstance(state, nag_optax.ScaleByAdanState)
  assert int(state.restarts) >= 1
  assert restarted[-1] < 1e-3 * f0 and plain[-1] < 1e-3 * f0


def test_adan_restart_every_resets_m_and_v_and_their_bias_corrections():
  """Against the reference extended by the documented reset (n carries on)."""
  kwargs = {"weight_decay": 0.02, "max_grad_norm": 0.5}
  ours, inner = trajectory(nag_optax.adan(0.01, restart_every=7, **kwargs))
  theirs = ref.reference_adan(P0, grad_np, STEPS, 0.01, restart_every=7, **kwargs)
  assert max_dev(ours, theirs) < TIGHT
  plain = ref.reference_adan(P0, grad_np, STEPS, 0.01, **kwargs)
  assert max_dev(ours, plain) > 1e-4  # the restarts did change the path
  assert int(inner.restarts) == STEPS // 7
  assert int(inner.count) == STEPS
  assert int(inner.momentum_count) == STEPS % 7


def _adan_directions_np(grads, values, b1, b2, b3, eps, *, n_correction_from):
  """scale_by_adan(restart="function")'s directions, transcribed from the
  reference step (sail-sg/Adan, `_single_tensor_adan`) with the documented
  restart: a loss that went up zeroes m and v after the step and restarts
  their bias corrections (step k); the correction of n counts from
  ``n_correction_from``: "start" (step t, the rule) or "restart" (k)."""
  m = v = n = np.zeros_like(grads[0])
  prev_grad, prev_value, k, out = None, np.inf, 0, []
  for t, (g, value) in enumerate(zip(grads, values, strict=True), start=1):
    k += 1
    delta = np.zeros_like(g) if prev_grad is None else g - prev_grad
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * delta
    n = b3 * n + (1 - b3) * (g + b2 * delta) ** 2
    c3 = 1 - b3 ** (t if n_correction_from == "start" else k)
    denom = np.sqrt(n) / np.sqrt(c3) + eps
    out.append((m / (1 - b1**k) + b2 * v / (1 - b2**k)) / denom)
    if value > prev_value:
      m, v, k = 0 * m, 0 * v, 0
    prev_value, prev_grad = value, g
  return np.stack(out)


def test_adan_second_moment_correction_counts_from_the_start_across_restarts():
  """A restart leaves n and its bias correction 1 - b3^t alone: only m and
  v restart theirs. Step by step against the transcription above."""
  b1, b2, b3, eps = 0.98, 0.92, 0.99, 1e-8
  grads = np.random.default_rng(3).normal(size=(8, 4))
  values = [3.0, 2.0, 2.5, 2.0, 1.5, 1.7, 1.0, 0.5]  # up at steps 3 and 6
  tx = nag_optax.scale_by_adan(b1, b2, b3, eps, restart="function")
  params = jnp.zeros(4)
  state, ours = tx.init(params), []
  for g, value in zip(grads, values, strict=True):
    direction, state = tx.update(jnp.asarray(g), state, params, value=value)
    ours.append(direction)
  assert int(state.restarts) == 2 and int(state.count) == 8
  rule = _adan_directions_np(grads, values, b1, b2, b3, eps, n_correction_from="start")
  assert max_dev(np.stack(ours), rule) < TIGHT
  # The other count changes every step after the first restart, by far
  # more than rounding: the test tells the two apart.
  other = _adan_directions_np(
    grads, values, b1, b2, b3, eps, n_correction_from="restart"
  )
  np.testing.assert_allclose(other[:3], rule[:3], rtol=TIGHT)
  assert np.min(np.max(np.abs(other[3:] - rule[3:]), axis=1)) > 1e-2


def test_adan_function_restart_zeroes_the_momentum_and_keeps_n():
  tx = nag_optax.scale_by_adan(restart="function")
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  state = tx.init(params)
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(params, state, params)
  grads = [{"w": jnp.array(g)} for g in ([1.0, 2.0, -1.0], [0.5, 1.0, 1.0])]
  _, state = tx.update(grads[0], state, params, value=1.0)
  assert int(state.restarts) == 0 and int(state.momentum_count) == 1
  _, state = tx.update(grads[1], state, params, value=2.0)  # the loss went up
  assert int(state.restarts) == 1
  assert int(state.momentum_count) == 0 and int(state.count) == 2
  for buffer in (state.m, state.v):
    assert float(optax.tree.norm(buffer)) == 0.0
  assert float(jnp.min(state.n["w"])) > 0.0
  np.testing.assert_array_equal(state.prev_grad["w"], grads[1]["w"])
  _, state = tx.update(grads[0], state, params, value=1.5)  # went down
  assert int(state.restarts) == 1 and int(state.momentum_count) == 1


def test_adan_gradient_restart_fires_exactly_when_the_step_goes_uphill():
  tx = nag_optax.scale_by_adan(restart="gradient")
  params = jnp.zeros(5)
  update = jax.jit(tx.update)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  fired = []
  for _ in range(30):
    grads = jnp.asarray(rng.normal(size=5))
    restarts = int(state.restarts)
    direction, state = update(grads, state, params)
    uphill = float(jnp.vdot(grads, -direction)) > 0
    assert int(state.restarts) - restarts == int(uphill)
    assert (int(state.momentum_count) == 0) == uphill
    fired.append(uphill)
  assert any(fired) and not all(fired)


@pytest.mark.parametrize(
  "factory,kwargs,match",
  [
    (nag_optax.nadam, {"b1": 1.0}, "b1"),
    (nag_optax.nadam, {"b2": -0.1}, "b2"),
    (nag_optax.nadam, {"momentum_decay": -1.0}, "momentum_decay"),
    (nag_optax.nadam, {"weight_decay": -1.0}, "weight_decay"),
    (nag_optax.adan, {"b3": 1.0}, "b3"),
    (nag_optax.adan, {"max_grad_norm": -1.0}, "max_grad_norm"),
    (nag_optax.adan, {"restart": "loss"}, "restart"),
    (nag_optax.adan, {"restart_every": 0}, "restart_every"),
  ],
)
def test_bad_hyperparameters_fail_at_construction(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(1e-3, **kwargs)


@pytest.mark.parametrize("module", [_nadam, _adan])
def test_docstring_examples(module):
  # The examples show JAX's default dtypes: run them without this module's x64.
  with jax.enable_x64(False):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
