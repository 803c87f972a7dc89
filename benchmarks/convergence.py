"""Iterations to tolerance: gradient descent, heavy ball and Nesterov variants.

Part 1, ill-conditioned quadratics: f(x) = 1/2 sum_i lambda_i x_i^2 with n = 200,
lambda_i = logspace(0, -log10 kappa, 200) (so L = 1, m = 1/kappa), x_0 = 1,
step 1/L, float64. The count is the first k with f <= tol * f(x_0), taken on
the non-extrapolated iterate: ``nag_optax.nesterov_eval_params`` for
Nesterov, the parameters themselves for gradient descent and heavy ball.
Every Nesterov variant (constant strongly-convex momentum, each schedule of
``nag_optax.momentum_schedules``, the three restart schemes) is run through
``nag_optax.nesterov``; gradient descent is ``nag_optax.nesterov`` with
momentum 0, heavy ball is ``optax.sgd(nesterov=False)``. Counts are compared
with the theory lines kappa ln(1/eps) and sqrt(kappa) ln(1/eps); gradient
descent's counts also with its closed form (``closed_form_gd_count``), and
the restart rows with an independent NumPy transcription of the restart rule.

Part 2, L2-regularised logistic regression on real data: CIFAR-10 (JPEG
copy), airplane against ship, 3000 training images 2x2-average-pooled to
768 features (standardised) plus a bias; step 1/L with L the smoothness
bound, kappa = L / lambda. f* comes from Newton's method; the count is the
first k with f - f* <= tol (f(w_0) - f*).

    python benchmarks/convergence.py           # both parts, about a minute
    python benchmarks/convergence.py --quick   # kappa <= 1000, fewer steps

Writes results/convergence.json and results/convergence.png.
"""

import argparse
import math
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

if __package__:  # imported as benchmarks.<script> from the repository root
  from benchmarks import _common
else:  # run as python benchmarks/<script>.py
  import _common  # noqa: E402

import nag_optax  # noqa: E402
from nag_optax import momentum_schedules as ms  # noqa: E402

N_DIM = 200
KAPPAS = (10.0, 100.0, 1000.0, 10000.0)
TOLS = (1e-6, 1e-10)
DATA_DIR = _common.REPO_ROOT / "data"


def closed_form_gd_count(lam, tol, steps):
  """First k with f(x_k) <= tol f(x_0) for gradient descent, from its closed form.

  With step 1/L = 1 and x_0 = 1 each coordinate contracts by (1 - lambda_i)
  per step, so f(x_k) = 1/2 sum_i lambda_i (1 - lambda_i)^(2k) exactly: no
  iteration of the optimizer is involved. None if it is not reached within
  ``steps``.
  """
  lam = np.asarray(lam, dtype=np.float64)
  weights = 0.5 * lam
  factor = (1.0 - lam) ** 2
  target = tol * float(np.sum(weights))
  ks = np.arange(1, steps + 1)
  for chunk in np.array_split(ks, max(1, steps // 4096)):
    values = (weights[None, :] * factor[None, :] ** chunk[:, None]).sum(axis=1)
    hits = np.flatnonzero(values <= target)
    if hits.size:
      return int(chunk[hits[0]])
  return None


def identity_eval(state, params):
  del state
  return params


def methods(kappa: float, step: float = 1.0):
  """(name, optimizer, evaluation point) for a problem with L/m = kappa.

  ``step`` is 1/L (1 for the quadratics).
  """
  root = math.sqrt(kappa)
  mu_sc = (root - 1.0) / (root + 1.0)
  every = math.ceil(math.e * math.sqrt(8.0 * kappa))
  nag = nag_optax.nesterov_eval_params
  acc = ms.accelerated()
  return [
    ("gradient descent", nag_optax.nesterov(step, momentum=0.0), nag),
    (
      "heavy ball, 1/L, constant mu",
      optax.sgd(step, momentum=mu_sc, nesterov=False),
      identity_eval,
    ),
    (
      "heavy ball, Polyak's optimal",
      optax.sgd(4.0 * step / (1.0 + 1.0 / root) ** 2, momentum=mu_sc**2),
      identity_eval,
    ),
    (
      "NAG, strongly_convex (constant)",
      nag_optax.nesterov(step, ms.strongly_convex(kappa)),
      nag,
    ),
    ("NAG, accelerated (k-1)/(k+2)", nag_optax.nesterov(step, acc), nag),
    ("NAG, fista", nag_optax.nesterov(step, ms.fista()), nag),
    ("NAG, sutskever(0.999)", nag_optax.nesterov(step, ms.sutskever(0.999)), nag),
    ("NAG, dozat(0.9, 0.004)", nag_optax.nesterov(step, ms.dozat()), nag),
    (
      "NAG, accelerated + gradient restart",
      nag_optax.nesterov(step, acc, restart="gradient"),
      nag,
    ),
    (
      "NAG, accelerated + function restart",
      nag_optax.nesterov(step, acc, restart="function"),
      nag,
    ),
    (
      "NAG, accelerated + restart every ceil(e sqrt(8 kappa))",
      nag_optax.nesterov(step, acc, restart_every=every),
      nag,
    ),
    (
      "NAG, strongly_convex + gradient restart",
      nag_optax.nesterov(step, ms.strongly_convex(kappa), restart="gradient"),
      nag,
    ),
  ]


def trajectory(tx, evaluate, value_and_grad, x0, steps):
  """f at the evaluation point after each of ``steps`` updates (jitted scan).

  The loss passed as ``value`` (for function restart) is the one at the
  stored parameters, where the gradient is taken.
  """

  @jax.jit
  def run(x0):
    def body(carry, _):
      x, state = carry
      value, grad = value_and_grad(x)
      updates, state = tx.update(grad, state, x, value=value)
      x = optax.apply_updates(x, updates)
      return (x, state), value_and_grad(evaluate(state, x))[0]

    (_, state), values = jax.lax.scan(body, (x0, tx.init(x0)), length=steps)
    return values, state

  values, state = run(x0)
  restarts = getattr(state, "restarts", None)
  return np.asarray(values), None if restarts is None else int(restarts)


def first_below(gaps: np.ndarray, threshold: float) -> int | None:
  """First k >= 1 (k updates applied) with gaps[k - 1] <= threshold."""
  hits = np.flatnonzero(gaps <= threshold)
  return int(hits[0]) + 1 if hits.size else None


def numpy_restart_count(lam, scheme, tol, every=None, steps=100_000):
  """Independent NumPy transcription of NAG with adaptive restart.

  O'Donoghue and Candes (2015) with the conventions nag_optax documents:
  x_{k+1} = y_k - grad f(y_k) / L; momentum mu_j = (j - 1) / (j + 2) with j
  the steps since the last restart; "gradient" restarts when
  grad f(y_k) . (x_{k+1} - x_k) > 0, "function" when f(y_k) > f(y_{k-1})
  (the losses at the points where the gradients are taken); a restart keeps
  the step, and sets y = x and j = 0. Counts on x, f(x_k) <= tol f(x_0).
  """
  f = lambda x: 0.5 * np.sum(lam * x * x)
  x_prev = np.ones_like(lam)
  y, j, f0, fy_prev = x_prev.copy(), 0, f(x_prev), np.inf
  for k in range(1, steps + 1):
    g, fy = lam * y, f(y)
    x = y - g
    j += 1
    if scheme == "gradient":
      restart = g @ (x - x_prev) > 0
    elif scheme == "function":
      restart = fy > fy_prev
    else:
      restart = False
    restart = restart or (every is not None and j >= every)
    fy_prev = fy
    y = x.copy() if restart else x + max(j - 1, 0) / (j + 2) * (x - x_prev)
    j = 0 if restart else j
    x_prev = x
    if f(x) <= tol * f0:
      return k
  return None


NUMPY_CHECKED = {
  "NAG, accelerated (k-1)/(k+2)": {"scheme": None},
  "NAG, accelerated + gradient restart": {"scheme": "gradient"},
  "NAG, accelerated + function restart": {"scheme": "function"},
  "NAG, accelerated + restart every ceil(e sqrt(8 kappa))": {"scheme": "every"},
}


def quadratic_part(kappas, cap_scale):
  results = []
  for kappa in kappas:
    lam = jnp.asarray(np.logspace(0.0, -np.log10(kappa), N_DIM))
    value_and_grad = lambda x, lam=lam: (0.5 * jnp.sum(lam * x * x), lam * x)
    x0 = jnp.ones(N_DIM)
    f0 = float(value_and_grad(x0)[0])
    steps = int(cap_scale * (7 * kappa + 2000))
    for name, tx, evaluate in methods(kappa):
      start = time.perf_counter()
      values, restarts = trajectory(tx, evaluate, value_and_grad, x0, steps)
      entry = {
        "kappa": kappa,
        "method": name,
        "steps_run": steps,
        "restarts": restarts,
        "seconds": time.perf_counter() - start,
        "final_ratio": float(values[-1] / f0),
      }
      check = NUMPY_CHECKED.get(name)
      for tol in TOLS:
        entry[f"iters_{tol:g}"] = first_below(values, tol * f0)
        if check is not None:
          every = math.ceil(math.e * math.sqrt(8.0 * kappa))
          entry[f"numpy_transcription_{tol:g}"] = numpy_restart_count(
            np.asarray(lam),
            check["scheme"],
            tol,
            every=every if check["scheme"] == "every" else None,
            steps=steps,
          )
        if name == "gradient descent":
          entry[f"closed_form_{tol:g}"] = closed_form_gd_count(
            np.asarray(lam), tol, steps
          )
      results.append(entry)
  return results


def load_cifar10_pair(data_dir: pathlib.Path, classes=(0, 8), per_class=1500):
  """First ``per_class`` training images of each class (NHWC uint8), labels +-1.

  Reads ``data_dir/cifar-10-batches-py`` with the CIFAR-10 example's loader.
  """
  from examples.cifar10.input_pipeline import load_cifar10

  data = load_cifar10(str(data_dir), download=False)
  images, labels = data["train_images"], data["train_labels"]
  keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
  keep.sort()
  return images[keep], (labels[keep] == classes[1]).astype(np.float64) * 2 - 1


def logistic_problem(data_dir, condition_number):
  images, y = load_cifar10_pair(data_dir)
  x = images.reshape(-1, 16, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(len(y), -1)
  x = x / 255.0
  x = (x - x.mean(0)) / x.std(0)
  x = np.concatenate([x, np.ones((len(y), 1))], axis=1)
  n = len(y)
  l_data = float(np.linalg.eigvalsh(x.T @ x / n)[-1]) / 4.0
  reg = l_data / (condition_number - 1.0)
  smooth = l_data + reg

  def loss_np(w):
    return float(np.mean(np.logaddexp(0.0, -y * (x @ w))) + 0.5 * reg * w @ w)

  # Newton's method for f*: quadratic convergence to float64 precision.
  w = np.zeros(x.shape[1])
  for _ in range(50):
    margin = y * (x @ w)
    sig = 1.0 / (1.0 + np.exp(margin))  # sigma(-margin)
    grad = -(x.T @ (y * sig)) / n + reg * w
    hess = (x.T * (sig * (1 - sig))) @ x / n + reg * np.eye(x.shape[1])
    w = w - np.linalg.solve(hess, grad)
    if np.linalg.norm(grad) < 1e-14:
      break
  f_star = loss_np(w)
  xj, yj = jnp.asarray(x), jnp.asarray(y)

  def value_and_grad(w):
    margin = yj * (xj @ w)
    value = jnp.mean(jnp.logaddexp(0.0, -margin)) + 0.5 * reg * w @ w
    grad = -(xj.T @ (yj * jax.nn.sigmoid(-margin))) / n + reg * w
    return value, grad

  info = {
    "data": "CIFAR-10 (JPEG copy), airplane vs ship, first 1500 train images each",
    "n_examples": n,
    "n_features": int(x.shape[1]),
    "L": smooth,
    "lambda": reg,
    "kappa_bound": smooth / reg,
    "newton_grad_norm": float(np.linalg.norm(grad)),
    "f_star": f_star,
    "f0": loss_np(np.zeros(x.shape[1])),
    "train_accuracy_at_optimum": float(np.mean(np.sign(x @ w) == y)),
  }
  return value_and_grad, jnp.zeros(x.shape[1]), info


def logistic_part(data_dir, condition_number, steps):
  value_and_grad, w0, info = logistic_problem(data_dir, condition_number)
  f0, f_star = info["f0"], info["f_star"]
  results, curves = [], {}
  for name, tx, evaluate in methods(info["kappa_bound"], step=1.0 / info["L"]):
    if "Polyak" in name:  # Tuned for quadratics only.
      continue
    # Gradient descent gets a longer budget so that it reaches the tolerances.
    n_steps = steps * (6 if name == "gradient descent" else 1)
    start = time.perf_counter()
    values, restarts = trajectory(tx, evaluate, value_and_grad, w0, n_steps)
    gaps = np.maximum(values - f_star, 0.0) / (f0 - f_star)
    entry = {
      "method": name,
      "steps_run": n_steps,
      "restarts": restarts,
      "seconds": time.perf_counter() - start,
      "final_gap": float(gaps[-1]),
    }
    for tol in TOLS:
      entry[f"iters_{tol:g}"] = first_below(gaps, tol)
    results.append(entry)
    curves[name] = gaps
  return info, results, curves


def fmt(k, cap=None):
  if k is None:
    return f"> {cap}" if cap else "-"
  return str(k)


def print_quadratic(results, kappas):
  for tol in TOLS:
    names = list(dict.fromkeys(r["method"] for r in results))
    rows = []
    for name in names:
      row = [name]
      for kappa in kappas:
        (r,) = [r for r in results if r["method"] == name and r["kappa"] == kappa]
        cell = fmt(r[f"iters_{tol:g}"], r["steps_run"])
        closed = r.get(f"closed_form_{tol:g}")
        if closed is not None and closed != r[f"iters_{tol:g}"]:
          cell += f" (closed form {closed})"
        numpy_count = r.get(f"numpy_transcription_{tol:g}")
        if numpy_count is not None and numpy_count != r[f"iters_{tol:g}"]:
          cell += f" (NumPy {numpy_count})"
        row.append(cell)
      rows.append(row)
    for label, scale in (("kappa ln(1/eps)", 1.0), ("sqrt(kappa) ln(1/eps)", 0.5)):
      rows.append(
        [f"theory: {label}"]
        + [f"{kappa**scale * math.log(1 / tol):.0f}" for kappa in kappas]
      )
    print(f"\nquadratic, n={N_DIM}, iterations to f <= {tol:g} f(x0)")
    print(_common.markdown_table(["method"] + [f"kappa={k:g}" for k in kappas], rows))


def closed_form_mismatches(results):
  out = []
  for r in results:
    for tol in TOLS:
      closed, got = r.get(f"closed_form_{tol:g}"), r[f"iters_{tol:g}"]
      if f"closed_form_{tol:g}" in r and got != closed:
        out.append(
          {
            "method": r["method"],
            "kappa": r["kappa"],
            "tol": tol,
            "measured": got,
            "closed_form": closed,
          }
        )
  return out


def plot(results, kappas, logistic, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = len(TOLS) + (1 if logistic else 0)
  fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 5.6))
  names = list(dict.fromkeys(r["method"] for r in results))
  palette = plt.cm.tab10(np.arange(10))
  colors = [palette[i % 10] for i in range(len(names))]
  styles = {name: ("o-" if i < 10 else "s--") for i, name in enumerate(names)}
  ks = np.asarray(kappas)
  for ax, tol in zip(axes, TOLS, strict=False):
    for name, color in zip(names, colors, strict=True):
      pts = [
        (r["kappa"], r[f"iters_{tol:g}"])
        for r in results
        if r["method"] == name and r[f"iters_{tol:g}"] is not None
      ]
      if pts:
        ax.loglog(
          *zip(*pts, strict=True),
          styles[name],
          color=color,
          ms=4,
          lw=1.2,
          label=name if tol == TOLS[0] else None,
        )
      closed = [
        (r["kappa"], r[f"closed_form_{tol:g}"])
        for r in results
        if r["method"] == name and r.get(f"closed_form_{tol:g}") is not None
      ]
      if closed:
        ax.loglog(*zip(*closed, strict=True), "x", color=color, ms=8)
    log_eps = math.log(1 / tol)
    theory = (
      ("kappa ln(1/eps)", "sqrt(kappa) ln(1/eps)") if tol == TOLS[0] else ("", "")
    )
    ax.loglog(ks, ks * log_eps, "k--", lw=2, label=theory[0] or None)
    ax.loglog(ks, np.sqrt(ks) * log_eps, "k:", lw=2, label=theory[1] or None)
    ax.set_xlabel("condition number kappa")
    ax.set_ylabel("iterations")
    ax.set_title(
      f"quadratic n={N_DIM}, f <= {tol:g} f(x0)\n(x: gradient descent, closed form)"
    )
    ax.grid(True, which="both", alpha=0.3)
  fig.legend(loc="lower center", ncol=4, fontsize=7.5, frameon=False)
  if logistic:
    info, curves = logistic
    ax = axes[-1]
    for name, color in zip(names, colors, strict=True):
      if name in curves:
        gaps = np.maximum(curves[name], 1e-17)
        ax.semilogy(
          np.arange(1, len(gaps) + 1), gaps, styles[name][1:], color=color, lw=1.2
        )
    ax.set_xlim(0, max(len(g) for n, g in curves.items() if n != "gradient descent"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("(f - f*) / (f(w0) - f*)")
    ax.set_ylim(1e-14, 2)
    ax.set_title(
      "logistic regression, CIFAR-10 (JPEG copy)\n"
      f"airplane vs ship, kappa <= {info['kappa_bound']:.0f}"
    )
    ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout(rect=(0, 0.17, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="kappa <= 1000")
  parser.add_argument("--logistic-kappa", type=float, default=1000.0)
  parser.add_argument("--logistic-steps", type=int, default=4000)
  parser.add_argument("--data-dir", type=pathlib.Path, default=DATA_DIR)
  parser.add_argument("--output", default=None, help="results name")
  args = parser.parse_args(argv)
  env = _common.environment()
  start = time.perf_counter()
  kappas = KAPPAS[:3] if args.quick else KAPPAS
  results = quadratic_part(kappas, cap_scale=1.0)
  print_quadratic(results, kappas)
  diffs = closed_form_mismatches(results)
  mismatched = [
    (r["method"], r["kappa"], tol)
    for r in results
    for tol in TOLS
    if f"numpy_transcription_{tol:g}" in r
    and r[f"numpy_transcription_{tol:g}"] != r[f"iters_{tol:g}"]
  ]
  print(
    f"\nNumPy transcription of the restart rule: {len(mismatched)} mismatches"
    f" {mismatched}"
  )
  print(f"gradient descent's closed form: {len(diffs)} mismatches")
  for d in diffs:
    print(f"  {d}")

  logistic = None
  payload = {
    "quadratic": results,
    "closed_form_mismatches": diffs,
    "numpy_transcription_mismatches": mismatched,
  }
  if (args.data_dir / "cifar-10-batches-py" / "data_batch_1").exists():
    steps = args.logistic_steps // (3 if args.quick else 1)
    info, log_results, curves = logistic_part(args.data_dir, args.logistic_kappa, steps)
    logistic = (info, curves)
    print(
      f"\nlogistic regression, {info['data']}: n={info['n_examples']},"
      f" d={info['n_features']}, kappa <= {info['kappa_bound']:.0f};"
      f" iterations to (f - f*) <= tol (f0 - f*)"
    )
    print(
      _common.markdown_table(
        ["method", *(f"tol {t:g}" for t in TOLS), "restarts"],
        [
          [
            r["method"],
            *(fmt(r[f"iters_{t:g}"], r["steps_run"]) for t in TOLS),
            "-" if r["restarts"] is None else r["restarts"],
          ]
          for r in log_results
        ],
      )
    )
    payload["logistic"] = {"problem": info, "results": log_results}
  else:
    print(
      f"\nno CIFAR-10 under {args.data_dir}: logistic part skipped (run"
      " make_cifar10.py, see benchmarks/README.md)",
      file=sys.stderr,
    )
  name = args.output or ("convergence_quick" if args.quick else "convergence")
  png = _common.RESULTS_DIR / f"{name}.png"
  _common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
  plot(results, kappas, logistic, png)
  payload["seconds"] = time.perf_counter() - start
  path = _common.write_json(name, payload, env)
  print(f"\nwrote {path} and {png} in {payload['seconds']:.0f} s")


if __name__ == "__main__":
  main()
