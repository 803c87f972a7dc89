"""Independent NumPy transcriptions of published update rules.

Each function follows its source line by line (named in its docstring) and
shares no code with nag_optax, so agreement is evidence, not tautology.
All work in float64 on flat NumPy vectors.
"""

import numpy as np


def torch_sgd(
  p0, grad_fn, steps, lr, momentum, dampening=0.0, weight_decay=0.0, nesterov=True
):
  """torch.optim.SGD, `_single_tensor_sgd` (PyTorch 2.x), maximize=False.

  ``lr`` is a function of the step index (0-based), as an LR scheduler that
  steps after every optimizer step would give. Returns the list of params
  after each step (p_1 .. p_steps).
  """
  p = np.array(p0, np.float64)
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
      d_p = d_p + momentum * buf if nesterov else buf
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
  p = np.array(p0, np.float64)
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
