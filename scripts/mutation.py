"""Mutation testing over hand-picked operators on the paths that matter.

Each mutant changes one expression of one source file of ``nag_optax`` in a
way a plausible bug would (a momentum read one step early, a bias
correction dropped, a gradient averaged twice across devices, a sign
flipped ...). For each, the script patches that file in a temporary copy of
the repository (``nag_optax/``, ``tests/`` and ``pyproject.toml``; the
working tree is never touched), runs the few test files that guard that
code there (``pytest -x``, with a timeout) and records whether a test
failed (the mutant is *killed*) or all passed (it *survived*). A survivor
is either a gap in the tests or an equivalent mutant (one that cannot
change any result); the report says which test killed each mutant.

Usage (a developer command, not a CI leg; about ten minutes on two cores)::

  .venv/bin/python scripts/mutation.py                 # this checkout
  .venv/bin/python scripts/mutation.py --repo ../nag_optax-old  # another checkout
  .venv/bin/python scripts/mutation.py --only nadam-no-bias-correction2
  .venv/bin/python scripts/mutation.py --list          # the mutants

It prints one line per mutant and a table per module, and writes a JSON
report (``--json``, default ``nag-optax-mutation.json`` in the
temporary directory). Before the mutants, each distinct test selection runs once on
the unmutated copy (``--no-baseline`` skips it): a selection that fails
there marks its mutants ``invalid`` instead of counting them as killed.

A mutant lists its patch as alternatives ``(old, new)``: the first ``old``
found exactly once in the file is replaced, so one mutant describes the
same change across refactorings of the code around it; none found makes
the mutant ``not-applied``.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

COPIED = ("nag_optax", "tests", "pyproject.toml")
DEFAULT_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One change of one file, and the tests that should notice it."""

  id: str
  path: str  # relative to the repository root
  description: str
  patches: tuple[tuple[str, str], ...]  # alternatives (old, new)
  # pytest runs, each its arguments (files, then a -k expression), run in
  # turn until one fails
  selections: tuple[tuple[str, ...], ...]


ACCUMULATION = (("tests/test_accumulation.py",),)
SCHEDULES = (("tests/test_momentum_schedules.py", "tests/test_acceleration.py"),)
EVAL_PARAMS = (("tests/test_nesterov_behaviour.py", "tests/test_nesterov_parity.py"),)
NADAM = (("tests/test_contract.py", "-k", "nadam"), ("tests/test_nadam_adan.py",))

MUTANTS = (
  Mutant(
    "accumulate-pmean-twice",
    "nag_optax/_accumulation.py",
    "the accumulated gradient averaged across devices twice (a pmean of a "
    "pmean: same values, three all-reduces)",
    (
      (
        "jax.lax.pmean(tree, axis_name)",
        "jax.lax.pmean(jax.lax.pmean(tree, axis_name), axis_name)",
      ),
    ),
    ACCUMULATION,
  ),
  Mutant(
    "accumulate-apply-skips-mean",
    "nag_optax/_accumulation.py",
    "update_and_apply emits each device's own accumulated gradient, "
    "without the cross-device mean",
    (
      (
        "mean = self._cross_device_mean(state, grads)",
        "mean = _cast_like(state.acc_grads, grads)",
      ),
      (
        "mean = _cast_like(_mean_across(tx.axis_name, state.acc_grads), grads)",
        "mean = _cast_like(state.acc_grads, grads)",
      ),
    ),
    ACCUMULATION,
  ),
  Mutant(
    "accumulate-welford-off-by-one",
    "nag_optax/_accumulation.py",
    "the running mean divides by mini_step + 2 instead of mini_step + 1",
    (("a + (g - a) / (mini_step + 1)", "a + (g - a) / (mini_step + 2)"),),
    ACCUMULATION,
  ),
  Mutant(
    "accumulate-emits-late",
    "nag_optax/_accumulation.py",
    "a cycle emits after k + 1 micro-batches (off by one in the count)",
    (
      (
        "emitting = state.mini_step == self.every_k(state.gradient_step) - 1",
        "emitting = state.mini_step == self.every_k(state.gradient_step)",
      ),
      (
        "emitting = mini_step == every_k_fn(state.gradient_step) - 1",
        "emitting = mini_step == every_k_fn(state.gradient_step)",
      ),
    ),
    ACCUMULATION,
  ),
  Mutant(
    "nesterov-lookahead-at-mu-k",
    "nag_optax/_nesterov.py",
    "the look-ahead reads mu_k instead of mu_{k+1}",
    (
      (
        "mu_next=jnp.asarray(momentum_fn(state.momentum_count + 1), scalar)",
        "mu_next=jnp.asarray(momentum_fn(state.momentum_count), scalar)",
      ),
    ),
    SCHEDULES,
  ),
  Mutant(
    "nesterov-buffer-at-mu-k-plus-1",
    "nag_optax/_nesterov.py",
    "the buffer reads mu_{k+1} instead of mu_k",
    (
      (
        "mu=jnp.asarray(momentum_fn(state.momentum_count), scalar)",
        "mu=jnp.asarray(momentum_fn(state.momentum_count + 1), scalar)",
      ),
    ),
    SCHEDULES,
  ),
  Mutant(
    "nesterov-dampens-first-step",
    "nag_optax/_nesterov.py",
    "dampening applied to the first gradient too (PyTorch starts the buffer undamped)",
    (
      (
        "state.momentum_count == 0, 1.0, 1.0 - jnp.asarray(dampening, scalar)",
        "state.momentum_count < 0, 1.0, 1.0 - jnp.asarray(dampening, scalar)",
      ),
    ),
    (("tests/test_nesterov_parity.py",),),
  ),
  Mutant(
    "nesterov-eval-lookahead-mu-k",
    "nag_optax/_nesterov.py",
    "the state records the look-ahead with mu_k: nesterov_eval_params "
    "corrects by the wrong momentum",
    (("lookahead=lambda h: -h.lr * h.mu_next,", "lookahead=lambda h: -h.lr * h.mu,"),),
    EVAL_PARAMS,
  ),
  Mutant(
    "eval-params-sign",
    "nag_optax/_eval_params.py",
    "nesterov_eval_params adds the look-ahead offset instead of removing it",
    (
      (
        "return (param.astype(dtype) - offset).astype(param.dtype)",
        "return (param.astype(dtype) + offset).astype(param.dtype)",
      ),
    ),
    EVAL_PARAMS,
  ),
  Mutant(
    "nadam-no-bias-correction2",
    "nag_optax/_nadam.py",
    "the second moment's bias correction dropped (first step 31.6x too large)",
    (
      (
        "bias_correction2=1.0 - jnp.asarray(b2, scalar) ** t.astype(scalar)",
        "bias_correction2=jnp.ones([], scalar)",
      ),
    ),
    NADAM,
  ),
  Mutant(
    "nadam-mu-t-plus-1",
    "nag_optax/_nadam.py",
    "Dozat's mu_t read one step late (mu_{t+1} for mu_t)",
    (
      (
        "mu_t = jnp.asarray(schedule(state.count))",
        "mu_t = jnp.asarray(schedule(state.count + 1))",
      ),
    ),
    NADAM,
  ),
  Mutant(
    "adan-n-correction-from-restart",
    "nag_optax/_adan.py",
    "the second moment's bias correction counted from the last restart",
    (("c3_sqrt=jnp.sqrt(1.0 - b3**t)", "c3_sqrt=jnp.sqrt(1.0 - b3**k)"),),
    (("tests/test_nadam_adan.py",),),
  ),
  Mutant(
    "adan-optax-coefficient",
    "nag_optax/_adan.py",
    "1 - b2 for b2 in the Nesterov gradient of n (optax 0.2.8's rule)",
    (
      (
        "nesterov_grad = g + _precision.cast_scalar(b2, g) * delta",
        "nesterov_grad = g + _precision.cast_scalar(1.0 - b2, g) * delta",
      ),
    ),
    (("tests/test_contract.py", "-k", "adan"), ("tests/test_nadam_adan.py",)),
  ),
  Mutant(
    "decay-decoupled-sign",
    "nag_optax/_weight_decay.py",
    "decoupled and proximal decay push the parameters away from zero",
    (("u = u - s * p.astype(u.dtype)", "u = u + s * p.astype(u.dtype)"),),
    (("tests/test_contract.py", "-k", "decoupled"), ("tests/test_weight_decay.py",)),
  ),
  Mutant(
    "decay-coupled-sign",
    "nag_optax/_weight_decay.py",
    "coupled (L2) decay subtracted from the gradient",
    (
      (
        "return g + _precision.cast_scalar(rate, g) * p.astype(g.dtype)",
        "return g - _precision.cast_scalar(rate, g) * p.astype(g.dtype)",
      ),
    ),
    (("tests/test_weight_decay.py",),),
  ),
  Mutant(
    "restart-gradient-inverted",
    "nag_optax/_restart.py",
    "the gradient restart fires when the step goes downhill",
    (
      (
        "decision = jnp.real(optax.tree.vdot(grads, step)) > 0",
        "decision = jnp.real(optax.tree.vdot(grads, step)) < 0",
      ),
    ),
    (("tests/test_contract.py", "-k", "restart"), ("tests/test_restart.py",)),
  ),
  Mutant(
    "restart-keeps-momentum-count",
    "nag_optax/_restart.py",
    "a restart zeroes the buffer but does not send the schedule back to 0",
    (
      (
        "restart_now, 0, optax.safe_increment(state.momentum_count)",
        "restart_now, optax.safe_increment(state.momentum_count), "
        "optax.safe_increment(state.momentum_count)",
      ),
    ),
    (("tests/test_restart.py",),),
  ),
  Mutant(
    "parallel-loss-last-micro-batch",
    "nag_optax/parallel/_step.py",
    "the loss metric (and value=) taken from the last micro-batch instead "
    "of their mean",
    (
      (
        "return grads, mean(losses), mean(auxes), model_state",
        "return grads, losses[-1], mean(auxes), model_state",
      ),
    ),
    # The accumulate_gradients variant of the test (the plain variants
    # with micro-batches check the same metrics).
    (("tests/test_parallel.py", "-k", "every_path and accumulate"),),
  ),
)


@dataclasses.dataclass
class Result:
  id: str
  module: str
  description: str
  selections: list[list[str]]
  status: str  # killed, survived, timeout, not-applied, invalid
  seconds: float
  killed_by: str | None = None


def _copy_repository(repo: Path, into: Path) -> None:
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
  for name in COPIED:
    source = repo / name
    if source.is_dir():
      shutil.copytree(source, into / name, ignore=ignore)
    else:
      shutil.copy2(source, into / name)


def _environment() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file never meets a stale .pyc
  env.pop("PYTHONPATH", None)
  return env


def _check_imports_the_copy(python: str, copy: Path) -> None:
  """The copy's nag_optax must shadow any installed (or editable) one."""
  out = subprocess.run(
    [python, "-c", "import nag_optax; print(nag_optax.__file__)"],
    cwd=copy,
    env=_environment(),
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  if not Path(out).resolve().is_relative_to(copy.resolve()):
    raise SystemExit(f"The copy imports nag_optax from {out}, not from {copy}.")


def _pytest(
  python: str, copy: Path, tests: Sequence[str], timeout: float
) -> tuple[str, float, str | None]:
  """Runs the tests in the copy: (passed | failed | timeout, seconds, first
  failing test)."""
  command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
  start = time.monotonic()
  try:
    done = subprocess.run(
      command,
      cwd=copy,
      env=_environment(),
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return "timeout", time.monotonic() - start, None
  seconds = time.monotonic() - start
  if done.returncode == 0:
    return "passed", seconds, None
  failed = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", done.stdout, re.MULTILINE)
  if failed:
    culprit = failed.group(1)
  elif done.returncode == 5:
    culprit = "(no tests collected)"
  else:
    culprit = f"(pytest exit status {done.returncode})"
  return "failed", seconds, culprit


def _run_mutant(
  mutant: Mutant, copy: Path, python: str, timeout: float
) -> tuple[str, float, str | None]:
  """(killed | survived | timeout | not-applied, seconds, killing test)."""
  path = copy / mutant.path
  original = path.read_text()
  for old, new in mutant.patches:
    if original.count(old) == 1:
      path.write_text(original.replace(old, new))
      break
  else:
    return "not-applied", 0.0, None
  total = 0.0
  try:
    for tests in mutant.selections:
      status, seconds, culprit = _pytest(python, copy, tests, timeout)
      total += seconds
      if status != "passed":
        return {"failed": "killed"}.get(status, status), total, culprit
    return "survived", total, None
  finally:
    path.write_text(original)


def run(
  repo: Path, mutants: Sequence[Mutant], timeout: float, baseline: bool
) -> list[Result]:
  python = sys.executable
  results = []
  with tempfile.TemporaryDirectory(prefix="nag-optax-mutation-") as tmp:
    copy = Path(tmp)
    _copy_repository(repo, copy)
    _check_imports_the_copy(python, copy)
    broken = set()
    if baseline:
      for tests in dict.fromkeys(t for m in mutants for t in m.selections):
        status, seconds, culprit = _pytest(python, copy, tests, timeout)
        print(f"baseline {status:8} {seconds:6.1f}s  {' '.join(tests)}", flush=True)
        if status != "passed":
          print(f"  fails unmutated: {culprit}", flush=True)
          broken.add(tests)
    for mutant in mutants:
      if broken.intersection(mutant.selections):
        status, seconds, culprit = "invalid", 0.0, None
      else:
        status, seconds, culprit = _run_mutant(mutant, copy, python, timeout)
      result = Result(
        id=mutant.id,
        module=mutant.path.removeprefix("nag_optax/"),
        description=mutant.description,
        selections=[list(t) for t in mutant.selections],
        status=status,
        seconds=round(seconds, 1),
        killed_by=culprit,
      )
      by = f"  by {culprit}" if culprit else ""
      print(f"{status:11} {seconds:6.1f}s  {mutant.id}{by}", flush=True)
      results.append(result)
  return results


def table(results: Sequence[Result]) -> str:
  statuses = ("killed", "survived", "timeout", "not-applied", "invalid")
  rows = [("module", "mutants", *statuses)]
  for module in dict.fromkeys(r.module for r in results):
    mine = [r for r in results if r.module == module]
    rows.append(
      (
        module,
        str(len(mine)),
        *(str(sum(r.status == s for r in mine)) for s in statuses),
      )
    )
  rows.append(
    (
      "all",
      str(len(results)),
      *(str(sum(r.status == s for r in results)) for s in statuses),
    )
  )
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = [
    "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
    for row in rows
  ]
  lines.insert(1, "  ".join("-" * w for w in widths))
  survivors = [r for r in results if r.status == "survived"]
  if survivors:
    lines.append("")
    lines.append("Survived:")
    lines.extend(f"  {r.id} ({r.module}): {r.description}" for r in survivors)
  return "\n".join(lines)


def _commit(repo: Path) -> str | None:
  try:
    return subprocess.run(
      ["git", "-C", str(repo), "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--repo",
    type=Path,
    default=Path(__file__).resolve().parent.parent,
    help="the checkout to mutate (default: this one)",
  )
  parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants")
  parser.add_argument(
    "--json",
    type=Path,
    default=Path(tempfile.gettempdir()) / "nag-optax-mutation.json",
    help="where to write the report (default: %(default)s)",
  )
  parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
  parser.add_argument("--no-baseline", dest="baseline", action="store_false")
  parser.add_argument("--list", action="store_true", help="list the mutants")
  args = parser.parse_args(argv)

  mutants = list(MUTANTS)
  if args.only:
    unknown = set(args.only) - {m.id for m in mutants}
    if unknown:
      parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    mutants = [m for m in mutants if m.id in args.only]
  if args.list:
    for m in mutants:
      runs = " | ".join(" ".join(t) for t in m.selections)
      print(f"{m.id:32} {m.path}: {m.description}\n{'':32} [{runs}]")
    return 0

  started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  start = time.monotonic()
  results = run(args.repo.resolve(), mutants, args.timeout, args.baseline)
  report = {
    "repo": str(args.repo.resolve()),
    "commit": _commit(args.repo),
    "started": started,
    "seconds": round(time.monotonic() - start, 1),
    "python": sys.executable,
    "mutants": [dataclasses.asdict(r) for r in results],
  }
  args.json.write_text(json.dumps(report, indent=2) + "\n")
  print()
  print(table(results))
  print(f"\n{len(results)} mutants in {report['seconds']}s; report: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
