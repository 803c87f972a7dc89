"""Trajectory parity of nag_optax.nesterov with published update rules.

Run in float64 (the x64 fixture) against the NumPy transcriptions in
numpy_reference.py, so agreement is to rounding (about 1e-15), not to float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nag_optax
from nag_optax import momentum_schedules
from tests import harness
from tests import numpy_reference as ref
from tests.harness import P0
from tests.harness import STEPS
from tests.harness import TIGHT
from tests.harness import grad_jnp
from tests.harness import grad_np
from tests.harness import max_dev
from tests.harness import trajectory
from tests.torch_import import import_torch

pytestmark = pytest.mark.usefixtures("x64")


def _linear_f64(init, end, steps):
  """A learning-rate schedule computed in float64 (optax's compute in float32,
  and XLA rounds those differently under jit than NumPy does)."""
  return lambda t: (
    init + (end - init) * jnp.minimum(jnp.asarray(t, jnp.float64), steps) / steps
  )


def _exponential_f64(init, rate):
  return lambda t: init * jnp.power(rate, jnp.asarray(t, jnp.float64))


def _as_numpy(schedule):
  return lambda t: float(schedule(t))


@pytest.mark.parametrize(
  "momentum,dampening,weight_decay",
  [
    (0.9, 0.0, 0.0),
    (0.5, 0.0, 0.0),
    (0.9, 0.0, 0.01),
    (0.9, 0.3, 0.0),
    (0.95, 0.2, 0.05),
  ],
)
def test_pytorch_form_matches_torch_sgd_transcription(
  momentum, dampening, weight_decay
):
  lr = lambda t: 0.05
  ours, _ = trajectory(
    nag_optax.nesterov(0.05, momentum, dampening=dampening, weight_decay=weight_decay)
  )
  theirs = ref.torch_sgd(P0, grad_np, STEPS, lr, momentum, dampening, weight_decay)
  assert max_dev(ours, theirs) < TIGHT


def test_pytorch_form_matches_torch_sgd_with_lr_schedule():
  schedule = _linear_f64(0.08, 0.01, STEPS)
  ours, _ = trajectory(nag_optax.nesterov(schedule, 0.9, weight_decay=0.02))
  theirs = ref.torch_sgd(P0, grad_np, STEPS, _as_numpy(schedule), 0.9, 0.0, 0.02)
  assert max_dev(ours, theirs) < TIGHT


def test_pytorch_form_without_decay_is_optax_sgd_exactly():
  ours, _ = trajectory(nag_optax.nesterov(0.05, 0.9))
  theirs, _ = trajectory(optax.sgd(0.05, 0.9, nesterov=True))
  np.testing.assert_array_equal(ours, theirs)


def test_sutskever_form_matches_keras_sgd_with_decaying_lr():
  schedule = _exponential_f64(0.08, 0.95)
  ours, _ = trajectory(
    nag_optax.nesterov(
      schedule,
      0.9,
      form="sutskever",
      weight_decay=0.01,
      decoupled_weight_decay=True,
    )
  )
  theirs = ref.keras_sgd(P0, grad_np, STEPS, _as_numpy(schedule), 0.9, 0.01)
  assert max_dev(ours, theirs) < TIGHT


def test_forms_agree_for_constant_lr_and_differ_under_a_schedule():
  pytorch, _ = trajectory(nag_optax.nesterov(0.05, 0.9))
  sutskever, _ = trajectory(nag_optax.nesterov(0.05, 0.9, form="sutskever"))
  assert max_dev(pytorch, sutskever) < TIGHT
  schedule = _exponential_f64(0.08, 0.9)
  pytorch, _ = trajectory(nag_optax.nesterov(schedule, 0.9))
  sutskever, _ = trajectory(nag_optax.nesterov(schedule, 0.9, form="sutskever"))
  assert max_dev(pytorch, sutskever) > 1e-3


def test_decoupled_weight_decay_is_sgdw():
  """SGDW (Loshchilov and Hutter 2019, alg. 1, nesterov): p -= lr (d + wd p)."""
  lr, mu, wd = 0.05, 0.9, 0.1
  p, buf = P0.copy(), np.zeros_like(P0)
  theirs = []
  for _ in range(STEPS):
    g = grad_np(p)
    buf = mu * buf + g
    p = p - lr * (g + mu * buf) - lr * wd * p
    theirs.append(p)
  ours, _ = trajectory(
    nag_optax.nesterov(lr, mu, weight_decay=wd, decoupled_weight_decay=True)
  )
  assert max_dev(ours, theirs) < TIGHT


@pytest.mark.parametrize("decoupled", [False, True])
def test_weight_decay_mask_leaves_masked_leaves_undecayed(decoupled):
  grad = lambda p: {"w": grad_jnp(p["w"]), "b": grad_jnp(p["b"])}
  p0 = {"w": P0, "b": P0[::-1].copy()}
  kwargs = dict(weight_decay=0.1, decoupled_weight_decay=decoupled)
  masked, _ = trajectory(
    nag_optax.nesterov(0.05, weight_decay_mask={"w": True, "b": False}, **kwargs),
    grad=grad,
    p0=p0,
  )
  decayed, _ = trajectory(nag_optax.nesterov(0.05, **kwargs), grad=grad, p0=p0)
  plain, _ = trajectory(nag_optax.nesterov(0.05), grad=grad, p0=p0)
  assert max_dev(masked["w"], decayed["w"]) < TIGHT
  assert max_dev(masked["b"], plain["b"]) < TIGHT
  assert max_dev(masked["b"], decayed["b"]) > 1e-3
  callable_mask, _ = trajectory(
    nag_optax.nesterov(
      0.05, weight_decay_mask=lambda p: {"w": True, "b": False}, **kwargs
    ),
    grad=grad,
    p0=p0,
  )
  assert max_dev(callable_mask["b"], masked["b"]) == 0


SCHEDULES = {
  "constant": lambda: 0.9,
  "accelerated": momentum_schedules.accelerated,
  "fista": momentum_schedules.fista,
  "sutskever": lambda: momentum_schedules.sutskever(0.95, period=5),
  "dozat": lambda: momentum_schedules.dozat(0.9, momentum_decay=0.5),
}


@pytest.mark.parametrize("form", ["pytorch", "sutskever"])
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_eval_params_recover_textbook_nag(form, schedule_name):
  """Stored params are the look-ahead Theta_t; eval params are theta_t."""
  momentum = SCHEDULES[schedule_name]()
  mu = momentum if callable(momentum) else (lambda t: momentum)
  mu_np = lambda t: float(mu(t))
  lr = 0.05
  tx = nag_optax.nesterov(lr, momentum, form=form)
  eval_theta = jax.jit(jax.vmap(nag_optax.nesterov_eval_params))

  ours, _ = trajectory(tx)
  textbook = ref.textbook_nag(P0, grad_np, STEPS, lambda t: lr, mu_np)
  lookahead = np.stack([la for _, la in textbook])
  theta = np.stack([th for th, _ in textbook])
  assert max_dev(ours, lookahead) < TIGHT

  # Rebuild the state after every step to map each Theta_t to theta_t.
  states = _states_along(tx)
  assert max_dev(eval_theta(states, ours), theta) < TIGHT


def test_sutskever_form_is_exact_nag_under_lr_schedule_and_pytorch_is_not():
  schedule = _exponential_f64(0.08, 0.93)
  eps = _as_numpy(schedule)
  textbook = ref.textbook_nag(P0, grad_np, STEPS, eps, lambda t: 0.9)
  lookahead = np.stack([la for _, la in textbook])
  sutskever, _ = trajectory(nag_optax.nesterov(schedule, 0.9, form="sutskever"))
  pytorch, _ = trajectory(nag_optax.nesterov(schedule, 0.9))
  assert max_dev(sutskever, lookahead) < TIGHT
  assert max_dev(pytorch, lookahead) > 1e-3


def _states_along(tx, steps=STEPS):
  return harness.run(tx, P0, steps, grad=grad_jnp, record=lambda p, state: state)[0]


def test_eval_params_for_bare_scale_by_nesterov_needs_the_learning_rate():
  tx = optax.chain(nag_optax.scale_by_nesterov(0.9), optax.scale_by_learning_rate(0.05))
  ours, state = trajectory(tx)
  textbook = ref.textbook_nag(P0, grad_np, STEPS, lambda t: 0.05, lambda t: 0.9)
  theta = textbook[-1][0]
  with pytest.raises(ValueError, match="pass learning_rate"):
    nag_optax.nesterov_eval_params(state, ours[-1])
  recovered = nag_optax.nesterov_eval_params(state, ours[-1], learning_rate=0.05)
  assert max_dev(recovered, theta) < TIGHT


def test_scale_by_nesterov_matches_optax_trace():
  ours, _ = trajectory(
    optax.chain(nag_optax.scale_by_nesterov(0.8), optax.scale_by_learning_rate(0.05))
  )
  theirs, _ = trajectory(
    optax.chain(optax.trace(0.8, nesterov=True), optax.scale_by_learning_rate(0.05))
  )
  np.testing.assert_array_equal(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.0), (0.8, 0.03)])
def test_pytorch_form_matches_torch_itself(momentum, weight_decay):
  torch = import_torch()
  hessian = torch.tensor(harness.HESSIAN, dtype=torch.float64)
  p = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
  opt = torch.optim.SGD(
    [p], lr=0.08, momentum=momentum, weight_decay=weight_decay, nesterov=True
  )
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.97**t)
  theirs = []
  for _ in range(STEPS):
    opt.zero_grad()
    loss = 0.5 * p @ hessian @ p + torch.cos(p).sum()
    loss.backward()
    opt.step()
    sched.step()
    theirs.append(p.detach().numpy().copy())
  lr = _exponential_f64(0.08, 0.97)
  ours, _ = trajectory(nag_optax.nesterov(lr, momentum, weight_decay=weight_decay))
  assert max_dev(ours, theirs) < TIGHT
