"""Independent NumPy transcriptions of published update rules.

Each function follows its source line by line (named in its docstring) and
shares no code with nag_optax, so agreement is evidence, not tautology.
All work in float64 on flat NumPy vectors, or complex128 ones: a complex
``p0`` keeps its parameters complex, and where a source squares a gradient
the transcription takes ``g * conj(g)``, i.e. |g|^2 as optax does (the same
numbers as ``g * g`` for real arrays). PyTorch's own optimizers instead view
a complex tensor as a pair of real ones.
"""

import numpy as np


def _params(p0):
  """``p0`` as a float64 (or complex128) working copy."""
  return np.array(p0, np.result_type(p0, np.float64))


def _abs_sq(x):
  """|x|^2, real; exactly ``x * x`` for real ``x``."""
  return (x * np.conj(x)).real


def torch_sgd(
  p0,
  grad_fn,
  steps,
  lr,
  momentum,
  dampening=0.0,
  weight_decay=0.0,
  nesterov=True,
  gradient_restart=False,
):
  """torch.optim.SGD, `_single_tensor_sgd` (PyTorch 2.x), maximize=False.

  ``lr`` is a function of the step index (0-based), as an LR scheduler that
  steps after every optimizer step would give. Returns the list of params
  after each step (p_1 .. p_steps).

  One switch leaves the reference, to describe nag_optax's documented
  ``restart="gradient"`` against it (O'Donoghue and Candes 2015, in the
  PyTorch form): when the step of the non-extrapolated iterate, -lr buf,
  goes uphill for the gradient d_p (Re <d_p, -buf> > 0), the buffer is
  zeroed before the look-ahead and the next step starts it afresh (undamped,
  as PyTorch's first step).
  """
  p = _params(p0)
  buf = None
  out = []
  for t in range(steps):
    d_p = grad_fn(p)
    if weight_decay != 0:
      d_p = d_p + weight_decay * p
    if momentum != 0:
      if buf is None:
        buf = d_p.copy()  # torch.clone(d_p).detach()
      else:
        buf = momentum * buf + (1 - dampening) * d_p  # buf.mul_(m).add_(d_p, 1-damp)
      restart = gradient_restart and np.real(np.vdot(d_p, -buf)) > 0
      if restart:
        buf = np.zeros_like(buf)
      d_p = d_p + momentum * buf if nesterov else buf
      if restart:
        buf = None
    p = p - lr(t) * d_p
    out.append(p.copy())
  return out


def keras_sgd(p0, grad_fn, steps, lr, momentum, weight_decay=0.0):
  """Keras 3 `keras.optimizers.SGD(nesterov=True)` with decoupled weight decay.

  `BaseOptimizer.apply`: `_apply_weight_decay` (variable -= variable * wd * lr)
  runs before `update_step`, whose Nesterov branch is
  ``m = m * momentum - g * lr; variable += m * momentum - g * lr``. The
  gradient is computed before the decay, at the same variable value.
  """
  p = _params(p0)
  m = np.zeros_like(p)
  out = []
  for t in range(steps):
    g = grad_fn(p)
    a = lr(t)
    p = p - p * weight_decay * a
    m = m * momentum - g * a
    p = p + m * momentum - g * a
    out.append(p.copy())
  return out


def textbook_nag(theta0, grad_fn, steps, eps, mu):
  """Sutskever et al. (2013), eq. (3)-(4), with schedules:

  v_{t+1} = mu_t v_t - eps_t grad f(theta_t + mu_t v_t)
  theta_{t+1} = theta_t + v_{t+1}

  ``eps`` and ``mu`` are functions of t = 0, 1, ... Returns the list of
  (theta_t, lookahead_t = theta_t + mu_t v_t) for t = 1 .. steps.
  """
  theta = np.array(theta0, np.float64)
  v = np.zeros_like(theta)
  out = []
  for t in range(steps):
    v = mu(t) * v - eps(t) * grad_fn(theta + mu(t) * v)
    theta = theta + v
    out.append((theta.copy(), theta + mu(t + 1) * v))
  return out


def quadratic(kappa, n=200):
  """f(x) = 1/2 sum lambda_i x_i^2, lambda_i = logspace(0, -log10 kappa, n)."""
  lam = np.logspace(0.0, -np.log10(kappa), n)
  return lam, (lambda x: 0.5 * np.sum(lam * x * x)), (lambda x: lam * x)


def iterations_to_tol(values, f0, tol):
  """First k >= 1 with values[k-1] <= tol * f0 (values[k-1] = f(x_k)), or None."""
  hits = np.nonzero(np.asarray(values) <= tol * f0)[0]
  return int(hits[0]) + 1 if hits.size else None


def gradient_descent_count(kappa, tol, max_steps=100_000):
  lam, f, grad = quadratic(kappa)
  x = np.ones_like(lam)
  f0 = f(x)
  for k in range(1, max_steps + 1):
    x = x - grad(x)  # step 1/L with L = 1
    if f(x) <= tol * f0:
      return k
  return None


def nag_count(kappa, tol, mu, max_steps=100_000):
  """Textbook NAG with step 1/L, counted on theta (the non-extrapolated iterate)."""
  lam, f, grad = quadratic(kappa)
  theta = np.ones_like(lam)
  v = np.zeros_like(lam)
  f0 = f(theta)
  for t in range(max_steps):
    v = mu(t) * v - grad(theta + mu(t) * v)
    theta = theta + v
    if f(theta) <= tol * f0:
      return t + 1
  return None


def restarted_nag_count(kappa, tol, mu, scheme, restart_every=None, max_steps=100_000):
  """O'Donoghue and Candes (2015), accelerated gradient with adaptive restart.

  x_{k+1} = y_k - (1/L) grad f(y_k);  y_{k+1} = x_{k+1} + beta_j (x_{k+1} - x_k)
  with beta_j = mu(j), j the iterations since the last restart. "gradient":
  restart when grad f(y_k)'(x_{k+1} - x_k) > 0; "function": when the loss at
  the gradient's point went up, f(y_k) > f(y_{k-1}) (nag_optax receives the
  loss where the gradient is taken). A restart keeps x_{k+1}, sets
  y_{k+1} = x_{k+1} and j = 0. Counted on x. Returns (count, restarts).
  """
  lam, f, grad = quadratic(kappa)
  x = np.ones_like(lam)
  y = x.copy()
  f0 = f(x)
  j, restarts, prev = 0, 0, np.inf
  for k in range(max_steps):
    g = grad(y)
    x_new = y - g
    if scheme == "gradient":
      restart = g @ (x_new - x) > 0
    elif scheme == "function":
      restart = f(y) > prev
    else:
      restart = False
    prev = f(y)
    if restart_every is not None and j + 1 >= restart_every:
      restart = True
    if restart:
      j, restarts = 0, restarts + 1
      y = x_new.copy()
    else:
      j += 1
      y = x_new + mu(j) * (x_new - x)
    x = x_new
    if f(x) <= tol * f0:
      return k + 1, restarts
  return None, restarts


def torch_nadam(
  p0,
  grad_fn,
  steps,
  lr,
  betas=(0.9, 0.999),
  eps=1e-8,
  weight_decay=0.0,
  momentum_decay=4e-3,
  decoupled_weight_decay=False,
):
  """torch.optim.NAdam, `_single_tensor_nadam` (PyTorch 2.x)."""
  beta1, beta2 = betas
  p = _params(p0)
  exp_avg, exp_avg_sq, mu_product = np.zeros_like(p), np.zeros(p.shape), 1.0
  out = []
  for t in range(steps):
    grad = grad_fn(p)
    step = t + 1
    bias_correction2 = 1 - beta2**step
    if weight_decay != 0:
      if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
      else:
        grad = grad + weight_decay * p
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product *= mu
    exp_avg = exp_avg + (grad - exp_avg) * (1 - beta1)  # lerp_
    exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * grad * np.conj(grad)).real
    denom = np.sqrt(exp_avg_sq / bias_correction2) + eps
    mu_product_next = mu_product * mu_next
    p = p + grad / denom * (-lr * (1.0 - mu) / (1.0 - mu_product))
    p = p + exp_avg / denom * ((-lr * mu_next) / (1.0 - mu_product_next))
    out.append(p.copy())
  return out


def reference_adan(
  p0,
  grad_fn,
  steps,
  lr,
  betas=(0.98, 0.92, 0.99),
  eps=1e-8,
  weight_decay=0.0,
  max_grad_norm=0.0,
  no_prox=False,
  nesterov_coef=None,
  restart_every=None,
):
  """sail-sg/Adan `adan.py`: `Adan.step` and `_single_tensor_adan`, one group.

  Two switches leave the reference, to describe other rules against it:
  ``nesterov_coef`` replaces beta2 where it multiplies the gradient
  difference in the two Nesterov terms (``neg_grad_or_diff * beta2 + grad``
  and ``step_size_diff``); optax 0.2.8 uses ``1 - beta2`` there.
  ``restart_every=K`` is nag_optax's documented restart (not in the
  reference): after every K-th step since the last restart, zero exp_avg and
  exp_avg_diff and restart the step count of their bias corrections; exp_avg_sq,
  its bias correction and the previous gradient carry on.
  """
  beta1, beta2, beta3 = betas
  coef = beta2 if nesterov_coef is None else nesterov_coef
  p = _params(p0)
  exp_avg, exp_avg_diff = np.zeros_like(p), np.zeros_like(p)
  exp_avg_sq = np.zeros(p.shape)
  neg_pre_grad = None
  momentum_step = 0
  out = []
  for step in range(1, steps + 1):
    momentum_step += 1
    grad = grad_fn(p)
    if max_grad_norm > 0:
      clip = min(max_grad_norm / (np.sqrt(np.sum(_abs_sq(grad))) + eps), 1.0)
    else:
      clip = 1.0
    bias_correction1 = 1.0 - beta1**momentum_step
    bias_correction2 = 1.0 - beta2**momentum_step
    bias_correction3 = 1.0 - beta3**step
    if neg_pre_grad is None:
      neg_pre_grad = grad * -clip
    grad = grad * clip
    neg_grad_or_diff = neg_pre_grad + grad
    exp_avg = exp_avg * beta1 + grad * (1 - beta1)
    exp_avg_diff = exp_avg_diff * beta2 + neg_grad_or_diff * (1 - beta2)
    neg_grad_or_diff = neg_grad_or_diff * coef + grad
    exp_avg_sq = exp_avg_sq * beta3 + _abs_sq(neg_grad_or_diff) * (1 - beta3)
    denom = np.sqrt(exp_avg_sq) / np.sqrt(bias_correction3) + eps
    step_size_diff = lr * coef / bias_correction2
    step_size = lr / bias_correction1
    if no_prox:
      p = p * (1 - lr * weight_decay)
      p = p - step_size * exp_avg / denom
      p = p - step_size_diff * exp_avg_diff / denom
    else:
      p = p - step_size * exp_avg / denom
      p = p - step_size_diff * exp_avg_diff / denom
      p = p / (1 + lr * weight_decay)
    neg_pre_grad = -grad
    if restart_every is not None and momentum_step == restart_every:
      exp_avg, exp_avg_diff, momentum_step = 0 * exp_avg, 0 * exp_avg_diff, 0
    out.append(p.copy())
  return out
