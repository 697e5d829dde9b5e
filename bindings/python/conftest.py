"""Finds the generated bindings: CARE_BINDINGS_DIR names the directory holding
care_bindings.py and the library (`bindings/generate DIR` writes them to DIR/python)."""

import os
import sys

bindings = os.environ.get("CARE_BINDINGS_DIR")
if not bindings:
    raise RuntimeError("set CARE_BINDINGS_DIR to the generated Python bindings' directory")
sys.path.insert(0, os.path.abspath(bindings))
