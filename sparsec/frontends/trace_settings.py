"""Settings a model needs only while it is traced, applied and then restored.

Rules:
- a Hugging Face model whose config has `use_cache=True` returns a KV cache object that
  torch.export cannot flatten; it is traced with `use_cache=False` and the config is restored
  afterwards, so the user's model is unchanged;
- every change made is returned as a sentence for the report.

Example:
    with trace_settings(model) as notes:
        program = torch.export.export(model, args)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["trace_settings"]


@contextlib.contextmanager
def trace_settings(model: torch.nn.Module) -> Iterator[list[str]]:
    """Disable what cannot be traced (the KV cache) for the block; yields the report notes."""
    config: Any = getattr(model, "config", None)
    notes: list[str] = []
    if getattr(config, "use_cache", False) is True:
        config.use_cache = False
        notes.append(
            "traced with config.use_cache=False (a KV cache cannot be traced); the model's "
            "config is unchanged"
        )
    try:
        yield notes
    finally:
        if notes:
            config.use_cache = True
