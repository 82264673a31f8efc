"""Helpers for tests that write pipeline files and read back the ConfigError they cause."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparsec.config import load_pipeline
from sparsec.errors import ConfigError

__all__ = ["config_error", "write"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return str(info.value)
