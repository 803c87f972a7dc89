"""The READMEs' measured figures are what benchmarks/make_readme.py draws.

The script reads only benchmarks/results/*.json and the standard library, so
this check imports no JAX.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "make_readme.py"


@pytest.fixture(scope="module")
def make_readme():
  spec = importlib.util.spec_from_file_location("make_readme", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("page", ["benchmarks", "example", "top"])
def test_readme_is_what_make_readme_writes(make_readme, page):
  path = {
    "benchmarks": make_readme.README,
    "example": make_readme.EXAMPLE_README,
    "top": make_readme.TOP_README,
  }[page]
  current = path.read_text(encoding="utf-8")
  assert current == make_readme.render(current, make_readme.PAGES[path]), (
    f"{path.name} differs from its results files: run python benchmarks/make_readme.py"
  )


def test_a_changed_figure_is_caught(make_readme):
  current = make_readme.README.read_text(encoding="utf-8")
  start = current.index("<!-- generated: update_step -->")
  end = current.index("<!-- end generated: update_step -->")
  region = current[start:end]
  edited = region.replace(" ms<br>", " ms <br>", 1)
  assert edited != region
  tampered = current[:start] + edited + current[end:]
  assert make_readme.render(tampered) == current


def test_a_page_without_its_region_is_caught(make_readme):
  with pytest.raises(KeyError, match="no region for"):
    make_readme.render("no regions here", ("cifar10_time",))


def test_every_region_has_a_renderer(make_readme):
  with pytest.raises(KeyError, match="no renderer"):
    make_readme.render("<!-- generated: nothing -->\n<!-- end generated: nothing -->")
