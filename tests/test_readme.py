"""The README's Python snippets run, in order, in one namespace."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_snippets_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 4
  namespace = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    if i == 0:  # the first snippet trains: the loss fell 100-fold
      ns = namespace
      start = {"w": ns["jnp"].full((4, 1), 0.5), "b": ns["jnp"].zeros(1)}
      initial = float(ns["loss"](start, ns["x"], ns["y"]))
      assert float(ns["loss"](ns["params"], ns["x"], ns["y"])) < 0.01 * initial
      assert "eval_params" in ns
  assert namespace["replicated"]["w"].shape[0] == jax.local_device_count()
