"""The sparse linear calls of an FX graph: which nodes they are, their static shapes, and the
kernel operands their runtime arguments become.

Rules:
- a sparse call is a `call_function` of one of `SPARSE_OPS`, matched by op name as TVM's
  Relax importer does (stand-in ops with the same schema lower the same way);
- `SparseCall.of(node)` reads the static part from the graph: the BsrShape (N:M and CSR
  are 1×1 blocks; array shapes from `node.meta["val"]`) and, for N:M, (n, m);
- `SparseCall.operands(*args)` turns the op's arguments after x into the kernel's compact
  (values [nnz, r, c], cols and crow int64) and the bias (None when the op has none): N:M slot k of
  a row holds input column `k // n * m + indices[k]`, a fixed count per row; an empty
  weight gets one unread zero block (`kernel_arrays`).

Example:
    call = SparseCall.of(node)
    values, cols, crow, bias = call.operands(*runtime_args[1:])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from sparsec.errors import BackendError

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
SPARSE_OPS: tuple[str, ...] = ("bsr_linear.default", "csr_linear.default", "nm_linear.default")
_NM_OP = "nm_linear.default"


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
    """The static part of one sparse linear call: its block shape, and (n, m) for N:M."""

    shape: BsrShape
    nm: tuple[int, int] | None = None

    @classmethod
    def of(cls, node: fx.Node) -> SparseCall:
        if not is_sparse_call(node):
            raise BackendError(f"%{node.name} does not call a sparse linear op ({SPARSE_OPS})")
        if node.target.__name__ == _NM_OP:  # type: ignore[union-attr]
            out_features, kept = _tensor_shape(node.args[1])
            n, m = int(node.args[4]), int(node.args[5])  # type: ignore[arg-type]
            return cls(BsrShape(out_features, kept * m // n, 1, 1), (n, m))
        values = _tensor_shape(node.args[1])
        r, c = (values[1], values[2]) if len(values) == 3 else (1, 1)
        return cls(BsrShape(int(node.args[5]), int(node.args[6]), r, c))  # type: ignore[arg-type]

    @property
    def arity(self) -> int:
        """Arguments the op takes after x: (values, indices, bias, n, m) or
        (values, cols, crow, bias, out_features, in_features)."""
        return 5 if self.nm is not None else 6

    def operands(
        self, values: torch.Tensor, *rest: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The kernel's (values, cols, crow) and the op's bias, from the op's args after x."""
        shape = self.shape
        if self.nm is not None:
            n, m = self.nm
            indices, bias = rest[0], rest[1]
            kept = indices.shape[1]
            group_base = torch.arange(kept, dtype=torch.int64) // n * m
            cols = (indices.to(torch.int64) + group_base).reshape(-1)
            crow = torch.arange(shape.out_features + 1, dtype=torch.int64) * kept
        else:
            cols, crow, bias = rest[0], rest[1], rest[2]
        values, cols = kernel_arrays(values, cols.to(torch.int64), shape)
        crow = crow.to(torch.int64).contiguous()
        return values, cols, crow, None if bias is None else bias.contiguous()
