"""The sparse linear calls of an FX graph: which nodes they are, their static shapes, and the
kernel operands their runtime arguments become.

Rules:
- a sparse call is a `call_function` of one of `SPARSE_OPS`, matched by op name as TVM's
  Relax importer does (stand-in ops with the same schema lower the same way);
- `SparseCall.of(node)` reads the static part from the graph: the BsrShape (N:M and CSR
  are 1×1 blocks; array shapes from `node.meta["val"]`) and, for N:M, (n, m);
- `SparseCall.operands(*args)` turns the op's arguments after x into the kernel's compact
  (values [nnz, r, c], cols and crow int64) and the bias (None when the op has none); the
  call's `SparseFormat` (`sparsec.ops.sparse_formats`) says how; an empty weight gets one
  unread zero block (`kernel_arrays`).

Example:
    call = SparseCall.of(node)
    values, cols, crow, bias = call.operands(*runtime_args[1:])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from sparsec.errors import BackendError
from sparsec.ops.sparse_formats import FORMATS, SparseFormat, StaticCall

from .kernels import BsrShape

__all__ = [
    "SPARSE_OPS",
    "SparseCall",
    "is_sparse_call",
    "kernel_arrays",
    "sparse_linear_shape",
    "sparse_nodes",
]

# op names (OpOverload.__name__, what the Relax importer keys its convert map on)
_BY_NAME: dict[str, SparseFormat] = {fmt.op.__name__: fmt for fmt in FORMATS.values()}
SPARSE_OPS: tuple[str, ...] = tuple(_BY_NAME)


def is_sparse_call(node: Any) -> bool:
    """Whether `node` calls one of sparsec's sparse linear ops."""
    return (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and getattr(node.target, "__name__", "") in SPARSE_OPS
    )


def sparse_nodes(module: fx.GraphModule) -> list[fx.Node]:
    """The calls of sparsec's sparse linear ops in `module`, in graph order."""
    return [node for node in module.graph.nodes if is_sparse_call(node)]


def _tensor_shape(node: Any) -> tuple[int, ...]:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        raise BackendError(f"%{node}: a sparse op's weight arrays need shapes in node.meta['val']")
    return tuple(int(dim) for dim in value.shape)


def sparse_linear_shape(node: fx.Node) -> BsrShape:
    """The (out, in, r, c) of a sparse linear call; N:M and CSR are 1×1 blocks."""
    return SparseCall.of(node).shape


def kernel_arrays(
    values: torch.Tensor, cols: torch.Tensor, shape: BsrShape
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values as [nnz, r, c] and cols, compact; an empty weight gets one unread zero block.

    Why: torch hands TVM size-0 tensors with strides that TVM's argument check rejects as
    not compact; with crow all zeros the kernel never reads the stand-in block.
    """
    if values.numel() == 0:
        return torch.zeros(1, shape.r, shape.c, dtype=values.dtype), torch.zeros(
            1, dtype=torch.int64
        )
    return values.reshape(-1, shape.r, shape.c).contiguous(), cols.contiguous()


@dataclass(frozen=True)
class SparseCall:
    """The static part of one sparse linear call: its block shape, (n, m) for N:M, and its
    format, which turns the op's arrays into kernel operands."""

    shape: BsrShape
    nm: tuple[int, int] | None = None
    format: SparseFormat = field(default_factory=lambda: FORMATS["bsr"])

    @classmethod
    def of(cls, node: fx.Node) -> SparseCall:
        if not is_sparse_call(node):
            raise BackendError(f"%{node.name} does not call a sparse linear op ({SPARSE_OPS})")
        return cls.of_args(_BY_NAME[node.target.__name__], node.args, _tensor_shape)  # type: ignore[union-attr]

    @classmethod
    def of_args(
        cls, fmt: SparseFormat, args: Sequence[Any], shape_of: Any = lambda t: tuple(t.shape)
    ) -> SparseCall:
        """The call of `fmt`'s op with `args` (x first); `shape_of` gives an array's shape."""
        static = fmt.static_call(args, shape_of)
        shape = BsrShape(static.out_features, static.in_features, *static.block)
        return cls(shape, static.nm, fmt)

    @property
    def arity(self) -> int:
        """Arguments the op takes after x: its arrays, the bias and two ints ((n, m), or
        (out_features, in_features))."""
        return len(self.format.parts) + 3

    def operands(
        self, values: torch.Tensor, *rest: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The kernel's (values, cols, crow) and the op's bias, from the op's args after x."""
        shape = self.shape
        static = StaticCall(shape.out_features, shape.in_features, (shape.r, shape.c), self.nm)
        values, cols, crow, bias = self.format.kernel_operands(static, (values, *rest))
        values, cols = kernel_arrays(values, cols, shape)
        crow = crow.contiguous()
        return values, cols, crow, None if bias is None else bias.contiguous()
