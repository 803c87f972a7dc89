"""Test set-up for the example: its modules importable as top-level names
(flax examples style), and the 8 forced CPU devices of tests/conftest.py
when this folder is tested on its own (set before JAX starts)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
