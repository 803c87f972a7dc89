"""Where the all-reduces of a compiled XLA program sit, from its HLO text."""

import re

# HLO text: computations start at column 0 ("%name (" or "ENTRY %name (") and
# end with "}"; calls name other computations in these attributes.
_CALLS = re.compile(
  r"(?:calls|to_apply|body|condition|branch_computations)=\{?([^}\s,]+(?:,\s*%[^}\s,]+)*)"
)


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
