"""Attribute types as the source writes them, not as Python evaluates them.

napoleon gives each attribute of a class's ``Attributes:`` section the type
of its annotation, evaluated: ``optax.Updates`` becomes the whole union it
aliases, and a private protocol its module path. This extension rewrites
each ``:vartype name:`` line napoleon produced with the annotation's source
text (``optax.Updates``, ``jax.Array``), naming private protocols by what they
are: callables.
"""

import ast
import inspect
import re
import textwrap

# Annotations of private helper types, as the reference shows them.
_PRIVATE = {"StateFn": "Callable", "Step": "Callable", "ToHost": "Callable"}
_VARTYPE = re.compile(r"^(\s*:vartype (\w+):)\s*(.*)$")


def source_annotations(cls):
  """``{field: annotation source text}`` of a class's annotated fields."""
  try:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
  except (OSError, TypeError, SyntaxError):
    return {}
  body = tree.body[0].body if tree.body and hasattr(tree.body[0], "body") else []
  found = {}
  for node in body:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      text = ast.unparse(node.annotation)
      found[node.target.id] = re.sub(
        r"\b\w+\b", lambda m: _PRIVATE.get(m.group(0), m.group(0)), text
      )
  return found


def _rewrite_vartypes(app, what, name, obj, options, lines):
  del app, name, options
  if what != "class" or not inspect.isclass(obj):
    return
  annotations = source_annotations(obj)
  for i, line in enumerate(lines):
    match = _VARTYPE.match(line)
    if match and match.group(2) in annotations:
      lines[i] = f"{match.group(1)} {annotations[match.group(2)]}"


def setup(app):
  # After napoleon (priority 500), which writes the :vartype: lines.
  app.connect("autodoc-process-docstring", _rewrite_vartypes, priority=600)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
