"""Values of the ONNX interpreter: tensors, and integer arithmetic known while tracing.

Rules:
- a shape computation (Shape → Gather → Concat → Reshape, and the Where/Equal/Expand
  chains the TorchScript exporter writes) runs on `Ints`: numpy object arrays of Python ints
  and torch SymInts, so the traced graph holds `x.size(0)` and literal sizes, never a
  tensor of sizes that torch.export would have to read back;
- small integer initializers and constants are `Ints` too, so a Reshape target stored as
  an initializer folds to literal sizes;
- an `Ints` that meets a tensor op becomes an int64 tensor (`to_tensor`); a traced tensor
  can never become `Ints` (that would need its values: a data-dependent shape).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["INT_BINARY", "Ints", "Value", "as_ints", "flat_list", "ints_op", "to_tensor"]

Int = int | torch.SymInt


class Ints:
    """An integer tensor whose values are known while tracing (ints or SymInts)."""

    def __init__(self, array: Any) -> None:
        self.array = np.array(array, dtype=object)

    @classmethod
    def of(cls, values: Sequence[Int], scalar: bool = False) -> Ints:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return cls(array.reshape(()) if scalar else array)

    @property
    def values(self) -> tuple[Int, ...]:
        return tuple(self.array.reshape(-1).tolist())

    @property
    def scalar(self) -> bool:
        return self.array.ndim == 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def dim(self) -> int:
        return int(self.array.ndim)

    def __repr__(self) -> str:
        return f"Ints({self.array.tolist()!r})"


Value = torch.Tensor | Ints


def to_tensor(value: Value) -> torch.Tensor:
    """An int64 tensor of an `Ints` (sizes stay symbolic through `torch.full`)."""
    if isinstance(value, torch.Tensor):
        return value
    values = value.values
    if all(isinstance(v, (int, np.integer, bool)) for v in values):
        tensor = torch.tensor([int(v) for v in values], dtype=torch.int64)
    else:
        tensor = torch.stack([torch.full((), v, dtype=torch.int64) for v in values])
    return tensor.reshape(value.shape)


def as_ints(value: Value | None, what: str) -> tuple[Int, ...]:
    """The integers of a shape-like input; a traced tensor here means a data-dependent shape."""
    if value is None:
        return ()
    if isinstance(value, Ints):
        return value.values
    real = isinstance(value, torch.Tensor) and not isinstance(value, torch._subclasses.FakeTensor)
    if real and value.numel() <= 64:  # a real constant: tolist() reads it without a traced op
        return tuple(int(v) for v in flat_list(value))
    raise ValueError(
        f"{what} is computed from tensor values at run time (a data-dependent shape), which "
        "a static graph cannot hold"
    )


def flat_list(value: torch.Tensor) -> list[Any]:
    """The values of a real (untraced) tensor as a flat Python list, without torch ops,
    which would turn a constant into a traced value under torch.export."""
    items = value.tolist()
    if not isinstance(items, list):
        return [items]
    while items and isinstance(items[0], list):
        items = [v for row in items for v in row]
    return items


def ints_op(fn: Callable[..., Any], *operands: Ints) -> Ints:
    """Elementwise `fn` over Ints with numpy broadcasting."""
    return Ints(np.frompyfunc(fn, len(operands), 1)(*(o.array for o in operands)))


def _int_div(x: Int, y: Int) -> Int:
    """ONNX integer Div truncates toward zero."""
    quotient = abs(x) // abs(y)
    negative = isinstance(x, int) and isinstance(y, int) and (x < 0) != (y < 0)
    return -quotient if negative else quotient


INT_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": _int_div,
    "Mod": operator.mod,
    "Max": lambda x, y: x if x >= y else y,
    "Min": lambda x, y: x if x <= y else y,
    "Equal": lambda x, y: int(x == y),
    "Less": lambda x, y: int(x < y),
    "Greater": lambda x, y: int(x > y),
    "LessOrEqual": lambda x, y: int(x <= y),
    "GreaterOrEqual": lambda x, y: int(x >= y),
    "And": lambda x, y: int(bool(x) and bool(y)),
    "Or": lambda x, y: int(bool(x) or bool(y)),
}
