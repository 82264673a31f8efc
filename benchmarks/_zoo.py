"""The test zoo (tests/zoo.py) for benchmarks, and the one-line failure text their tables hold.

Rules:
- `load_zoo()` imports tests/zoo.py by path (benchmarks do not import the tests package),
  once per process;
- `first_line(exc, limit)` is how a table cell names a failure: the class and the first
  line of its message.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["first_line", "load_zoo"]

ZOO_FILE = Path(__file__).resolve().parent.parent / "tests" / "zoo.py"


@functools.cache
def load_zoo() -> Any:
    spec = importlib.util.spec_from_file_location("sparsec_zoo", ZOO_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ZOO_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def first_line(exc: BaseException, limit: int = 220) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}"[:limit]
