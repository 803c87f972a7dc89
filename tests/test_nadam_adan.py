"""NAdam and Adan against NumPy transcriptions of PyTorch and the Adan reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from tests import numpy_reference as ref
from tests.test_nesterov_parity import _P0
from tests.test_nesterov_parity import STEPS
from tests.test_nesterov_parity import TIGHT
from tests.test_nesterov_parity import _grad_np
from tests.test_nesterov_parity import _max_dev
from tests.test_nesterov_parity import _run

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(name="x64")
def _x64():
  with jax.enable_x64(True):
    yield


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
  ours, _ = _run(nag_optax.nadam(0.02, **kwargs))
  betas = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
  theirs = ref.torch_nadam(_P0, _grad_np, STEPS, 0.02, betas=betas, **kwargs)
  assert _max_dev(ours, theirs) < TIGHT


def test_nadam_with_infinite_momentum_decay_is_optax_nadam():
  ours, _ = _run(nag_optax.nadam(0.02, momentum_decay=float("inf")))
  theirs, _ = _run(optax.nadam(0.02))
  assert _max_dev(ours, theirs) < TIGHT
  # ... and the default psi is not (the schedule is what PyTorch adds).
  default, _ = _run(nag_optax.nadam(0.02))
  assert _max_dev(default, theirs) > 1e-3


@pytest.mark.parametrize("decoupled", [False, True])
def test_nadam_matches_torch_itself(decoupled):
  torch = pytest.importorskip("torch")
  # NAdam keeps mu_product and step as default-dtype tensors: use float64.
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  try:
    hessian = torch.tensor(ref_hessian())
    p = torch.tensor(_P0, requires_grad=True)
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
  ours, _ = _run(
    nag_optax.nadam(0.02, weight_decay=0.05, decoupled_weight_decay=decoupled)
  )
  assert _max_dev(ours, theirs) < TIGHT


def ref_hessian():
  from tests import test_nesterov_parity

  return test_nesterov_parity._HESSIAN


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
  ours, _ = _run(nag_optax.adan(0.01, **kwargs))
  betas = tuple(kwargs.pop(b, d) for b, d in (("b1", 0.98), ("b2", 0.92), ("b3", 0.99)))
  theirs = ref.reference_adan(_P0, _grad_np, STEPS, 0.01, betas=betas, **kwargs)
  assert _max_dev(ours, theirs) < TIGHT


def test_where_and_by_how_much_optax_adan_departs_from_the_reference():
  """optax 0.2.8 uses (1 - b2) for b2 in both Nesterov terms of Adan."""
  theirs = np.stack(ref.reference_adan(_P0, _grad_np, STEPS, 0.01))
  optax_adan, _ = _run(optax.adan(0.01))
  per_step = np.max(np.abs(np.asarray(optax_adan) - theirs), axis=1)
  # Step 1 (Delta_1 = 0) agrees up to optax's float32 scalars (1.6e-9 here);
  # from step 2 the (1 - b2) terms depart, and the gap grows (measured at
  # lr 0.01: 1.9e-6 at step 2, 2.1e-4 at step 40; ours stays < 1e-12).
  assert per_step[0] < 1e-8
  assert per_step[1] > 100 * per_step[0]
  assert per_step[-1] > 1e-4 and per_step[-1] > 10 * per_step[1]
  ours, _ = _run(nag_optax.adan(0.01))
  assert _max_dev(ours, theirs) < TIGHT


def test_adan_state_is_no_larger_than_the_references_four_buffers():
  params = {"w": jnp.ones((7, 3)), "b": jnp.ones(3)}
  state = nag_optax.adan(1e-3, weight_decay=0.01).init(params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_state = sum(x.size for x in jax.tree.leaves(state))
  assert n_state <= 4 * n_params + 16  # four buffers plus a few scalars


@pytest.mark.parametrize("scheme", ["gradient", "function"])
def test_adan_restart_fires_resets_momentum_and_keeps_converging(scheme):
  from tests import quadratic_runs

  kappa = 100
  plain, _, _ = quadratic_runs_run_adan(quadratic_runs, kappa, None)
  restarted, f0, state = quadratic_runs_run_adan(quadratic_runs, kappa, scheme)
  (inner,) = [s for s in state if isinstance(s, nag_optax.ScaleByAdanState)]
  assert int(inner.restarts) >= 1
  assert restarted[-1] < 1e-3 * f0 and plain[-1] < 1e-3 * f0


def quadratic_runs_run_adan(quadratic_runs, kappa, scheme):
  """f(theta) per step of Adan on the notes' quadratic; Adan has no look-ahead."""
  lam_np, f_np, _ = ref.quadratic(kappa)
  lam = jnp.asarray(lam_np)
  f = lambda x: 0.5 * jnp.sum(lam * x * x)
  tx = nag_optax.adan(0.05, restart=scheme)

  @jax.jit
  def run(x):
    def step(carry, _):
      x, state = carry
      updates, state = tx.update(lam * x, state, x, value=f(x))
      x = optax.apply_updates(x, updates)
      return (x, state), f(x)

    (_, state), values = jax.lax.scan(step, (x, tx.init(x)), length=600)
    return values, state

  values, state = run(jnp.ones_like(lam))
  return np.asarray(values), f_np(np.ones_like(lam_np)), state
