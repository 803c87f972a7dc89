"""Sphinx configuration of the nag_optax documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` after
``pip install -e '.[docs]'``. Every guide is a MyST notebook that myst-nb
executes during the build; an error in any cell fails the build.
"""

import logging
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
# The kernel the guides run in: docs/_jupyter/kernels/python3 is Jupyter's
# python3 kernel with its log at ERROR, so that ipykernel's start-up notice
# (it listens on 127.0.0.1 over TCP without encryption) is not printed once
# per guide. Errors of the code cells are not log records: they still fail
# the build.
os.environ["JUPYTER_PATH"] = os.pathsep.join(
  [str(DOCS / "_jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
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
  "sphinx.ext.intersphinx",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",
  "docs_checks",
  "public_types",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# API reference: one page per public name, generated from the lists in
# api.rst; docs_checks fails the build when a name of nag_optax.__all__ or
# nag_optax.parallel.__all__ is missing from them.
autosummary_generate = True
autosummary_imported_members = False
# Public names that are another name of a class (nag_optax.NesterovState):
# docs/_templates/autosummary/class.rst documents the class on their page
# too, where autodoc alone would print only "alias of ...".
autosummary_context = {
  "class_aliases": {
    name: obj.__name__
    for module in (nag_optax, nag_optax.parallel)
    for name in module.__all__
    if isinstance(obj := getattr(module, name), type) and obj.__name__ != name
  }
}
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

# Links into the references of the libraries the pages name. Without network
# access (a sandboxed build) the inventories cannot be fetched: the pages
# then build the same, with those names as plain text, and the one warning
# intersphinx gives for it is logged as information (_OfflineInventories
# below), so that -W does not fail an offline build. Every other warning,
# intersphinx's included, stays a warning.
intersphinx_mapping = {
  "python": ("https://docs.python.org/3", None),
  "numpy": ("https://numpy.org/doc/stable", None),
  "jax": ("https://docs.jax.dev/en/latest", None),
  "optax": ("https://optax.readthedocs.io/en/latest", None),
  "flax": ("https://flax.readthedocs.io/en/latest", None),
}
intersphinx_timeout = 10

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
  # sphinx-book-theme has its search field in the sidebar; the pydata theme
  # (0.16 and newer) adds a second one to the header unless told not to.
  "navbar_persistent": [],
}
html_static_path = ["_static"]
# Wide tables scroll sideways instead of being clipped; code wraps nowhere.
html_css_files = ["layout.css"]


class _OfflineInventories(logging.Filter):
  """Logs intersphinx's "failed to reach any of the inventories" as info."""

  def filter(self, record):
    if record.levelno == logging.WARNING and str(record.msg).startswith(
      "failed to reach any of the inventories"
    ):
      record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """Leaves out NamedTuple fields: the class's Attributes section has them."""
  del app, what, name, options
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return skip


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
  logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_OfflineInventories())
