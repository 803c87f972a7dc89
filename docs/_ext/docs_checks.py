"""Sphinx checks that fail the build, whatever -W says.

1. Every public name is documented: each name in ``nag_optax.__all__``,
   ``nag_optax.parallel.__all__`` and ``nag_optax.momentum_schedules.__all__``
   must be described by the Python domain once the documents are read (an
   autosummary entry in api.rst does that). A name added to an ``__all__``
   without a reference page stops the build with an error naming it.
2. Every Python block runs: the pages may hold Python only in ``{code-cell}``
   directives, which myst-nb executes, never in a plain ``python`` code
   fence, which would be shown without being run. (Docstring examples in the
   API reference are run by the test suite, tests/ ``test_docstring_*``.)
"""

import importlib
import re

from sphinx.errors import ExtensionError

MODULES = ("nag_optax", "nag_optax.parallel", "nag_optax.momentum_schedules")
_UNEXECUTED = re.compile(
  r"^\s*(```+|~~~+|:::+)\s*(\{code-block\}|\{code\}|\{sourcecode\})?\s*"
  r"(python|py|python3|ipython|pycon)\s*$|^\s*\.\. (code-block|code|sourcecode)::"
  r"\s*(python|py|python3|ipython|pycon)\s*$",
  re.MULTILINE,
)


def public_names():
  """Fully qualified names of everything the modules above export."""
  names = []
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    names += [f"{module_name}.{name}" for name in module.__all__]
  return names


def _check_api_coverage(app, env):
  del app
  documented = set(env.get_domain("py").objects)
  missing = [name for name in public_names() if name not in documented]
  if missing:
    raise ExtensionError(
      "docs_checks: these public names have no entry in the API reference "
      "(add them to docs/api.rst): " + ", ".join(missing)
    )


def _check_no_unexecuted_python(app, docname, source):
  path = app.env.doc2path(docname)
  if "_autosummary" in str(path):
    return
  match = _UNEXECUTED.search(source[0])
  if match:
    line = source[0][: match.start()].count("\n") + 1
    raise ExtensionError(
      f"docs_checks: {path}:{line}: a Python block that the build does not "
      "run; write it as a {code-cell} so that myst-nb executes it."
    )


def setup(app):
  app.connect("source-read", _check_no_unexecuted_python)
  app.connect("env-check-consistency", _check_api_coverage)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
