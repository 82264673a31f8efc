"""Shared pytest setup: make the shared test models (`tests/models.py`) importable as `models`."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_configure(config: object) -> None:
    """The break-even gate's measurement cache lives in a fresh directory per test session:
    tests must not read figures a developer's earlier runs (or older kernels) left behind."""
    import os
    import tempfile

    os.environ["SPARSEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsec-test-cache-")
