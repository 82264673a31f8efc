"""Check call-time inputs against the compiled signature before any backend sees them.

Rules:
- each input tensor (torch or numpy) must have the traced dtype, rank and static sizes;
  dynamic dims (`batch`, `seq`) take any size;
- inputs given by keyword are matched by name, positional ones in order;
- a mismatch is an InputError that says which input, what was expected and the fix; nothing
  is cast silently (a float64 array is refused, with the cast to write).

Example:
    check_inputs(graph.input_specs, (x,), {})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from sparsec.errors import InputError
from sparsec.ir.graph import InputSpec

__all__ = ["check_inputs", "input_specs_from_manifest"]


def input_specs_from_manifest(inputs: Sequence[dict[str, Any]]) -> tuple[InputSpec, ...]:
    """The `inputs` list an artifact's manifest stores, as InputSpecs."""
    return tuple(InputSpec(str(i["name"]), str(i["dtype"]), tuple(i["shape"])) for i in inputs)


def _dtype_and_shape(value: Any) -> tuple[str, tuple[int, ...]] | None:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch."), tuple(value.shape)
    if isinstance(value, np.ndarray):
        return str(value.dtype), tuple(value.shape)
    return None


def _cast_hint(dtype: str) -> str:
    return {"float32": ".float()", "int64": ".long()", "int32": ".int()", "float16": ".half()"}.get(dtype, f".to(torch.{dtype})")


def _check(spec: InputSpec, value: Any) -> None:
    found = _dtype_and_shape(value)
    if found is None:
        return
    dtype, shape = found
    expected = "[" + ", ".join(str(d) for d in spec.shape) + "]"
    if dtype != spec.dtype:
        raise InputError(
            f"input {spec.name!r} is {dtype}, but the model was compiled for {spec.dtype} {expected}. "
            f"Fix: pass x{_cast_hint(spec.dtype)} (numpy: x.astype('{spec.dtype}')), or compile "
            f"with {dtype} example inputs"
        )
    if len(shape) != len(spec.shape):
        raise InputError(
            f"input {spec.name!r} has rank {len(shape)} {list(shape)}, but the model was compiled "
            f"for rank {len(spec.shape)} {expected}"
        )
    for axis, (size, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(want, int) and size != want:
            raise InputError(
                f"input {spec.name!r} has size {size} on axis {axis}, but the model was compiled "
                f"for {expected} (only named dims are dynamic). Fix: pass that size, or compile "
                "with example inputs of this size"
            )


def check_inputs(specs: Sequence[InputSpec], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise InputError if a tensor input does not fit `specs` (see module rules)."""
    by_name = {spec.name: spec for spec in specs}
    for name, value in kwargs.items():
        if name in by_name:
            _check(by_name[name], value)
    if args:
        leaves = [leaf for leaf in pytree.tree_leaves(tuple(args)) if _dtype_and_shape(leaf) is not None]
        for spec, leaf in zip(specs, leaves, strict=False):
            _check(spec, leaf)
