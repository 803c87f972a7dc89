"""Lets the example's tests import its modules as top-level names (flax style)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
