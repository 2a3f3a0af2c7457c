"""Arms the fast tier's guard (``tests/tier.py``) in a Python process that a fast test starts:
``tests/conftest.py`` puts this folder first on the children's ``PYTHONPATH``."""

import importlib.util
import os
from pathlib import Path

if os.environ.get("VOXBUS_TEST_TIER") == "fast":
    _spec = importlib.util.spec_from_file_location(
        "voxbus_test_tier", Path(__file__).resolve().parents[1] / "tier.py")
    assert _spec is not None and _spec.loader is not None
    _tier = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_tier)
    _tier.install(_tier.Guard())
