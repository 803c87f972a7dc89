"""Shared helpers for the benchmark scripts: environment record, timing, JSON.

Every script under ``benchmarks/`` records where and how it ran
(:func:`environment`), times with :func:`time_steps` or :func:`interleaved`
(medians after warm-up, ``block_until_ready`` on every result), prints a
table (:func:`markdown_table`) and saves everything with :func:`write_json`
to ``benchmarks/results/<name>.json``.

Import it from a script run as ``python benchmarks/<script>.py`` with
``from _common import ...`` (the script's own folder is on ``sys.path``), or
as ``benchmarks._common`` from the repository root.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

# Scripts run as `python benchmarks/<script>.py` see benchmarks/ on sys.path,
# not the repository root: make the in-tree nag_optax (and examples/)
# importable without installing the package.
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

_PACKAGES = ("jax", "jaxlib", "optax", "numpy", "flax", "torch", "scipy")


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo on Linux), else platform's."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
  """Python and the installed versions of the packages benchmarks touch."""
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  try:
    import nag_optax

    out["nag_optax"] = nag_optax.__version__
  except ImportError:
    out["nag_optax"] = None
  return out


def git_revision() -> dict[str, Any]:
  """HEAD's commit and whether tracked files differ from it."""

  def git(*args):
    return subprocess.run(
      ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()

  try:
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit, "dirty": dirty}


def load_average() -> list[float] | None:
  """``os.getloadavg()`` (1, 5, 15 minutes), None where unsupported."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def devices() -> list[dict[str, str]]:
  """JAX's devices (platform and kind), importing JAX only if needed."""
  import jax

  return [
    {"platform": d.platform, "device_kind": d.device_kind, "id": str(d.id)}
    for d in jax.devices()
  ]


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Where, when and how a benchmark ran."""
  argv = sys.argv if argv is None else argv
  return {
    "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join([pathlib.Path(sys.executable).name, *argv]),
    "machine": {
      "platform": platform.platform(),
      "cpu_model": cpu_model(),
      "cpu_count": os.cpu_count(),
    },
    "devices": devices(),
    "versions": versions(),
    "git": git_revision(),
    "load_average_start": load_average(),
    "env_flags": {
      k: os.environ[k]
      for k in ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS")
      if k in os.environ
    },
  }


def block(tree: Any) -> Any:
  """Waits for every array in ``tree`` (JAX arrays; anything else passes)."""
  import jax

  return jax.block_until_ready(tree)


def time_steps(
  step: Callable[[Any], Any],
  carry: Any,
  *,
  warmup: int = 3,
  repeat: int = 20,
  sync: Callable[[Any], Any] = block,
) -> tuple[list[float], Any]:
  """Times ``carry = step(carry)`` ``repeat`` times after ``warmup`` calls.

  ``step`` consumes its input (donation) and returns the next carry, which is
  synchronised with ``sync`` inside each timed call.

  Returns:
    (seconds per call, the final carry).
  """
  for _ in range(warmup):
    carry = sync(step(carry))
  times = []
  for _ in range(repeat):
    start = time.perf_counter()
    carry = sync(step(carry))
    times.append(time.perf_counter() - start)
  return times, carry


class Candidate:
  """One timed contender for :func:`interleaved`: a step and its carry."""

  def __init__(
    self,
    name: str,
    step: Callable[[Any], Any],
    carry: Any,
    sync: Callable[[Any], Any] = block,
  ):
    self.name = name
    self.step = step
    self.carry = carry
    self.sync = sync
    self.times: list[float] = []

  def run(self, n: int, record: bool = True) -> None:
    for _ in range(n):
      start = time.perf_counter()
      self.carry = self.sync(self.step(self.carry))
      if record:
        self.times.append(time.perf_counter() - start)

  def release(self) -> None:
    self.carry = None


def interleaved(
  candidates: Sequence[Candidate],
  *,
  warmup: int = 3,
  rounds: int = 10,
  per_round: int = 2,
) -> dict[str, list[float]]:
  """Times candidates in alternation so machine noise hits all alike.

  Each candidate is warmed up ``warmup`` times, then ``rounds`` rounds each
  run ``per_round`` timed calls of every candidate, the order rotating from
  round to round.

  Returns:
    candidate name -> list of ``rounds * per_round`` seconds per call.
  """
  for c in candidates:
    c.run(warmup, record=False)
  n = len(candidates)
  for r in range(rounds):
    for i in range(n):
      candidates[(i + r) % n].run(per_round)
  return {c.name: list(c.times) for c in candidates}


def summarize(times: Sequence[float]) -> dict[str, float]:
  """Median, quartiles, min and count of a list of seconds."""
  ordered = sorted(times)
  q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
  return {
    "median_s": statistics.median(ordered),
    "q1_s": q[0],
    "q3_s": q[2],
    "min_s": ordered[0],
    "n": len(ordered),
  }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table (strings as given, floats as %.3g)."""

  def cell(x):
    if isinstance(x, float):
      return f"{x:.3g}"
    return str(x)

  lines = [
    "| " + " | ".join(headers) + " |",
    "|" + "|".join("---" for _ in headers) + "|",
  ]
  lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], env: dict[str, Any]) -> pathlib.Path:
  """Writes ``{"environment": env, **payload}`` to results/<name>.json.

  Adds the load average at the end of the run next to the one at the start.
  """
  RESULTS_DIR.mkdir(parents=True, exist_ok=True)
  env = dict(env, load_average_end=load_average())
  path = RESULTS_DIR / f"{name}.json"
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"environment": env, **payload}, f, indent=1, default=_jsonable)
    f.write("\n")
  return path


def _jsonable(x: Any) -> Any:
  try:
    import numpy as np

    if isinstance(x, np.generic):
      return x.item()
    if isinstance(x, np.ndarray):
      return x.tolist()
  except ImportError:
    pass
  return str(x)
