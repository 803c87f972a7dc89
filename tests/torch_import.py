"""PyTorch for the tests that compare against it, or a skip without it.

``NAG_OPTAX_REQUIRE_TORCH=1`` (CI's ``torch`` leg) turns the skip into a
failure, so that a broken install cannot pass as skipped tests.
"""

import functools
import os

import pytest


@functools.cache
def import_torch():
  try:
    import torch
  except ImportError as error:
    if os.environ.get("NAG_OPTAX_REQUIRE_TORCH") == "1":
      pytest.fail(f"torch cannot be imported (NAG_OPTAX_REQUIRE_TORCH=1): {error}")
    pytest.skip("torch is not installed")
  return torch
