"""The API reference's examples: every public name has one, and each runs.

The Sphinx build runs the same check (docs/_ext/docs_checks.py); this runs
it on the test suite's 8 CPU devices and on the installed jax version.
"""

import pathlib
import sys

import pytest

_EXT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "_ext"
if not (_EXT / "api_examples.py").is_file():
  # The sdist carries tests/ but not docs/: the documentation's check is run
  # from a checkout (CI, the docs build).
  pytest.skip("docs/_ext is not in this tree", allow_module_level=True)
sys.path.insert(0, str(_EXT))

import api_examples  # noqa: E402


def _wrong_output():
  """Returns one.

  Example:
    >>> 1 + 1
    3
  """


def _no_example():
  """Returns nothing, and shows no example."""


def _no_output():
  """Returns nothing.

  Example:
    >>> _ = 1 + 1
  """


@pytest.mark.parametrize("name", api_examples.public_names())
def test_api_example_runs_and_prints_what_it_shows(name):
  assert api_examples.run_docstring_examples([name]) == []


def test_a_wrong_output_a_missing_example_and_no_output_are_reported():
  this = __name__
  problems = dict(
    api_examples.run_docstring_examples(
      [f"{this}._wrong_output", f"{this}._no_example", f"{this}._no_output"]
    )
  )
  assert "Expected:\n    3\nGot:\n    2" in problems[f"{this}._wrong_output"]
  assert "no '>>>' example" in problems[f"{this}._no_example"]
  assert "show no output" in problems[f"{this}._no_output"]
