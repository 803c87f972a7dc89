"""Test set-up: 8 forced CPU devices, before JAX is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax  # noqa: E402 - after the flags above, which JAX reads on import
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test in float64 (jax_enable_x64), the one switch the tests use."""
  with jax.enable_x64(True):
    yield
