"""Where the collectives of a compiled XLA program sit, from its HLO text."""

import dataclasses
import re

import numpy as np

# HLO text: computations start at column 0 ("%name (" or "ENTRY %name (") and
# end with "}"; calls name other computations in these attributes.
_CALLS = re.compile(
  r"(?:calls|to_apply|body|condition|branch_computations)=\{?([^}\s,]+(?:,\s*%[^}\s,]+)*)"
)
_COLLECTIVE = re.compile(
  r"= (.+?) (all-reduce|reduce-scatter|all-gather|all-to-all|collective-permute)"
  r"(?:-start)?\("
)
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}


def _computations(hlo):
  comps, name, entry = {}, None, None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%(\S+) \(", line)
    if header:
      name = header.group(2)
      comps[name] = []
      if header.group(1):
        entry = name
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps, entry


def _reachable(comps, roots):
  seen, todo = set(), list(roots)
  while todo:
    c = todo.pop()
    if c in seen:
      continue
    seen.add(c)
    for line in comps[c]:
      for group in _CALLS.findall(line):
        todo += [n.strip().lstrip("%") for n in group.split(",")]
  return seen


def _nbytes(shape_text):
  total = 0
  for dtype, dims in _SHAPE.findall(shape_text):
    size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    total += size * _BYTES.get(dtype, int(dtype[1:]) // 8 if dtype[1:] else 4)
  return total


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction: its kind, the bytes of its result, where."""

  op: str
  nbytes: int
  in_loop: bool  # inside a while loop's body (runs once per iteration)
  branch: int | None  # index of the conditional branch holding it, or None


def collectives(hlo):
  """Every collective of ``hlo`` reachable from its entry computation."""
  comps, entry = _computations(hlo)
  loops, branches = set(), {}
  for c in _reachable(comps, [entry]):
    for line in comps[c]:
      if " while(" in line:
        (body,) = re.findall(r"body=%?([^,\s}]+)", line)
        loops |= _reachable(comps, [body])
      if " conditional(" in line:
        (names,) = re.findall(r"branch_computations=\{([^}]*)\}", line)
        for i, b in enumerate(names.split(",")):
          for r in _reachable(comps, [b.strip().lstrip("%")]):
            branches[r] = i
  found = []
  for c in _reachable(comps, [entry]):
    for line in comps[c]:
      match = _COLLECTIVE.search(line)
      if match:
        shape, op = match.groups()
        found.append(Collective(op, _nbytes(shape), c in loops, branches.get(c)))
  return found


def collective_placement(hlo):
  """Where the all-reduces are.

  Returns:
    (number outside every conditional, [[number per branch] per conditional]).
  """
  comps, entry = _computations(hlo)
  is_collective = lambda line: re.search(r"\ball-reduce(-start)?\(", line)
  count = lambda names: sum(
    1 for c in names for line in comps[c] if is_collective(line)
  )
  conditionals = [
    line
    for c in _reachable(comps, [entry])
    for line in comps[c]
    if " conditional(" in line
  ]
  inside, branches = set(), []
  for line in conditionals:
    (names,) = re.findall(r"branch_computations=\{([^}]*)\}", line)
    names = [b.strip().lstrip("%") for b in names.split(",")]
    reached = [_reachable(comps, [b]) for b in names]
    inside |= set().union(*reached)
    branches.append([count(r) for r in reached])
  return count(_reachable(comps, [entry]) - inside), branches
