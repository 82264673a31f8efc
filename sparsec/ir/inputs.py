"""Example inputs in the one shape the tracer and the runners take: (args, kwargs)."""

from __future__ import annotations

from typing import Any

import torch

from sparsec.errors import TraceError

__all__ = ["normalize_inputs"]


def normalize_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Accept a tensor, a tuple of args, or a dict of keyword args."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TraceError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, not {type(example_inputs).__name__}"
    )
