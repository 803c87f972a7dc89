"""The API examples: every public name's ``>>>`` examples, run with doctest.

Used by docs_checks during the Sphinx build and by tests/test_docstrings.py;
it needs nothing but the package itself.
"""

import doctest
import importlib
import inspect
import io
import types

MODULES = ("nag_optax", "nag_optax.parallel", "nag_optax.momentum_schedules")


def public_names():
  """Fully qualified names of everything the modules above export."""
  names = []
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    names += [f"{module_name}.{name}" for name in module.__all__]
  return names


# NORMALIZE_WHITESPACE: a printed pytree may wrap differently from the way
# the docstring wraps it. Outputs are otherwise compared exactly.
DOCTEST_FLAGS = doctest.NORMALIZE_WHITESPACE


def run_docstring_examples(names=None):
  """Runs the ``>>>`` examples of the public names; returns the problems.

  Args:
    names: fully qualified names to check; every public name when None.

  Returns:
    A list of ``(name, report)`` pairs, empty when every example ran and
    printed what its docstring shows. A name without an example, or whose
    examples show no output, is a problem too.
  """
  finder = doctest.DocTestFinder(recurse=False)
  problems = []
  for qualname in names or public_names():
    module_name, _, attr = qualname.rpartition(".")
    obj = getattr(importlib.import_module(module_name), attr)
    if isinstance(obj, types.ModuleType):
      continue  # a subpackage: its own names are checked one by one
    home = inspect.getmodule(obj)
    globs = dict(vars(home)) if home else {}
    tests = [t for t in finder.find(obj, qualname, globs=globs) if t.examples]
    if not tests:
      problems.append((qualname, "no '>>>' example in its docstring"))
      continue
    if not any(example.want for test in tests for example in test.examples):
      problems.append((qualname, "its examples show no output to check"))
      continue
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    for test in tests:
      runner.run(test, out=out.write, clear_globs=True)
    if runner.failures:
      problems.append((qualname, out.getvalue()))
  return problems
