"""Make `ansible_collections.vmigrate.v2v` importable from this checkout in pytest, and load
the `reliability` fixture (tests/reliability.py) for every suite."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

pytest_plugins = ["reliability"]
