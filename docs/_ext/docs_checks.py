"""Sphinx checks that fail the build, whatever -W says.

1. Every public name is documented: each name in ``nag_optax.__all__``,
   ``nag_optax.parallel.__all__`` and ``nag_optax.momentum_schedules.__all__``
   must be described by the Python domain once the documents are read (an
   autosummary entry in api.rst does that). A name added to an ``__all__``
   without a reference page stops the build with an error naming it.
2. Every Python block runs: the pages may hold Python only in ``{code-cell}``
   directives, which myst-nb executes, never in a plain ``python`` code
   fence, which would be shown without being run.
3. Every API example runs and prints what it shows: each public name's
   docstring (modules aside) holds at least one ``>>>`` example showing an
   output, and every
   example is run with :mod:`doctest` during the build; an exception, or an
   output other than the one written under the example, stops the build
   with doctest's report. The examples run in the Sphinx process, on the
   devices JAX finds there (one CPU device when nothing is configured).

The examples run here rather than in ``sphinx.ext.doctest``'s separate
``-b doctest`` builder so that the one html build CI and Read the Docs run
checks them, the check cannot be left out of a build that publishes the
pages, and a public name without an example is an error too.
"""

import re

from api_examples import public_names
from api_examples import run_docstring_examples
from sphinx.errors import ExtensionError

_UNEXECUTED = re.compile(
  r"^\s*(```+|~~~+|:::+)\s*(\{code-block\}|\{code\}|\{sourcecode\})?\s*"
  r"(python|py|python3|ipython|pycon)\s*$|^\s*\.\. (code-block|code|sourcecode)::"
  r"\s*(python|py|python3|ipython|pycon)\s*$",
  re.MULTILINE,
)


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


def _check_docstring_examples(app, env):
  del env
  problems = run_docstring_examples()
  if problems:
    raise ExtensionError(
      "docs_checks: API examples that fail or are missing:\n"
      + "\n".join(f"--- {name}: {report}" for name, report in problems)
    )


def setup(app):
  app.connect("source-read", _check_no_unexecuted_python)
  app.connect("env-check-consistency", _check_api_coverage)
  app.connect("env-check-consistency", _check_docstring_examples)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
