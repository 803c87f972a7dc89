"""Sphinx configuration of the nag_optax documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` after
``pip install -e '.[docs]'``. Every guide is a MyST notebook that myst-nb
executes during the build; an error in any cell fails the build.
"""

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # nag_optax from this checkout
sys.path.insert(0, str(DOCS / "_ext"))

# The guides run on the CPU (as on Read the Docs); the notebook kernels
# inherit this environment.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["PYTHONPATH"] = os.pathsep.join(
  [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)

import nag_optax  # noqa: E402

project = "nag_optax"
author = "nag_optax developers"
copyright = "nag_optax developers"
release = nag_optax.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",
  "docs_checks",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# API reference: one page per public name, generated from the lists in
# api.rst; docs_checks fails the build when a name of nag_optax.__all__ or
# nag_optax.parallel.__all__ is missing from them.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
# Signatures without annotations, as optax's reference shows them: the Args
# sections say what each argument takes, and an alias such as
# optax.ScalarOrSchedule would otherwise be printed expanded into its union.
autodoc_typehints = "none"
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" sections become field lists of the class, so that they do not
# describe the same attribute twice next to :members:.
napoleon_use_ivar = True

# MyST and myst-nb: execute every notebook on every build, fail on an error
# in any cell, and turn output written to stderr (JAX's warnings among it)
# into a Sphinx warning, which -W makes an error.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 600
nb_output_stderr = "warn"
nb_merge_streams = True
nb_render_markdown_format = "myst"

html_theme = "sphinx_book_theme"
html_title = f"nag_optax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "repository_url": "https://github.com/nag-optax/nag-optax",
  "use_repository_button": False,
}
html_static_path = []


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Leaves out NamedTuple fields: the class's Attributes section has them."""
  del app, what, name, options
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return skip


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
