"""Checks that .ci/floors.txt pins exactly the floors pyproject.toml declares.

Every runtime dependency and every dependency of the `test` extra must have a
`>=` floor, and floors.txt must pin each of them with `==` at that version
(plus jaxlib at jax's version, which jax itself pins). Run with any Python
>= 3.11: `python .ci/check_floors.py`; with `--oldest-python` it prints only
the oldest Python minor version that requires-python allows (e.g. 3.11).
"""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _name(raw):
  return re.sub(r"[-_.]+", "-", raw).lower()


def main():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  oldest = re.fullmatch(r">=\s*(3\.[0-9]+)", project["requires-python"])
  if oldest is None:
    sys.exit("check_floors: requires-python is not of the form '>=3.N'")
  if sys.argv[1:] == ["--oldest-python"]:
    print(oldest[1])
    return
  declared = {}
  for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][A-Za-z0-9.]*)", requirement)
    if match is None:
      sys.exit(f"check_floors: {requirement!r} has no plain '>=' floor")
    declared[_name(match[1])] = match[2]
  declared["jaxlib"] = declared["jax"]

  pinned = {}
  for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      name, version = line.split("==")
      pinned[_name(name)] = version.strip()

  if pinned != declared:
    sys.exit(
      "check_floors: .ci/floors.txt and pyproject.toml disagree:\n"
      f"  pyproject.toml floors: {sorted(declared.items())}\n"
      f"  .ci/floors.txt pins:   {sorted(pinned.items())}"
    )
  print(
    "floors (pyproject.toml == .ci/floors.txt): "
    + ", ".join(f"{k}=={v}" for k, v in sorted(pinned.items()))
  )
  print(f"requires-python: >={oldest[1]}")


if __name__ == "__main__":
  main()
