"""Helpers for tests that write pipeline files and read back the ConfigError they cause."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sparsec.config import load_pipeline
from sparsec.errors import ConfigError

__all__ = ["ErrorCase", "assert_located_error", "config_error", "write"]

ErrorCase = tuple[str, int, str, list[str]]
"""A bad file's text, the line and field its error must name, and fragments it must hold."""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return str(info.value)


def assert_located_error(tmp_path: Path, name: str, case: ErrorCase) -> str:
    """Write the case's text as `name`, load it, check the error's `file:line: field:` and
    fragments, and return the message."""
    text, line, field, fragments = case
    path = write(tmp_path, name, text)
    message = config_error(path)
    assert f"{path}:{line}: {field}: " in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message
