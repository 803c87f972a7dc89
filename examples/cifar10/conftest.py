"""Test set-up for the example: its modules importable as top-level names
(flax examples style), the 8 forced CPU devices of tests/conftest.py when
this folder is tested on its own (set before JAX starts), and the synthetic
dataset the tests train on."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A small synthetic CIFAR-10 in the official layout
  (input_pipeline.write_synthetic), written once per test session."""
  import input_pipeline

  out = str(tmp_path_factory.mktemp("cifar10"))
  input_pipeline.write_synthetic(out)
  return out
