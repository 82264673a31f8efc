"""A sparse format is a class: CSR, BSR and N:M each own their op, arrays, ONNX form and operands.

Rules:
- a `SparseFormat` knows its custom op (`op`), which masks it fits (`fits`), how to compress
  a `[out, in]` weight (`compress`, arrays named by `parts`) and get it back
  (`decompress`), the op's argument list (`call_args`), what a call of its op says
  statically (`static_call`: the block shape and (n, m)), how `torch.onnx.export` writes
  the op (`onnx_translation`), and the block-sparse kernel operands `(values, cols, crow)`
  its arrays become (`kernel_operands`), which every block-sparse kernel (TVM's included)
  runs;
- ONNX Runtime has no fast sparse kernel, so each `onnx_translation` rebuilds the dense
  weight inside the ONNX graph from the stored values and indices (ScatterND /
  ScatterElements) and runs one MatMul: the file keeps the compressed weights, ORT computes
  the same numbers as the reference kernel (constant folding may densify small weights).
  Static sizes come from the op's int arguments and the arrays' static shapes;
  `sparsec.ops.onnx` collects the translations from `FORMATS`;
- `FORMATS` maps names to formats; `format_of(op)` finds a format by its op;
  `natural_format(pattern)` is the format a mask pattern calls for;
- code never branches on a format's name: it asks the format.

Example:
    fmt = natural_format(SparsityPattern("block", 0.9, block=(16, 1)))  # BSR
    arrays = fmt.compress(weight, mask, pattern)
    y = fmt.op(*fmt.call_args(x, arrays, bias, weight.shape, pattern))
    assert torch.equal(fmt.decompress(arrays, weight.shape, pattern), weight * mask)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparsec.ops import _kernels  # noqa: F401 - registers torch.ops.sparsec before `op` names it
from sparsec.ops.formats import from_bsr, from_csr, from_nm, to_bsr, to_csr, to_nm
from sparsec.ops.masks import SparsityPattern

__all__ = [
    "BSR",
    "CSR",
    "FORMATS",
    "NM",
    "SparseFormat",
    "StaticCall",
    "format_of",
    "natural_format",
]


@dataclass(frozen=True)
class StaticCall:
    """What a call of a sparse op fixes: the weight's shape, its block and (n, m) for N:M."""

    out_features: int
    in_features: int
    block: tuple[int, int]
    nm: tuple[int, int] | None = None


class SparseFormat(ABC):
    """One compressed weight format and its sparse linear op."""

    name: ClassVar[str]
    parts: ClassVar[tuple[str, ...]]  # names of the compressed arrays, in op order

    @property
    @abstractmethod
    def op(self) -> Any:
        """The `torch.ops.sparsec.*_linear.default` overload that runs this format."""

    @abstractmethod
    def fits(self, pattern: SparsityPattern) -> bool:
        """Whether a mask of `pattern` can be stored in this format."""

    @abstractmethod
    def compress(
        self, weight: torch.Tensor, mask: torch.Tensor | None, pattern: SparsityPattern
    ) -> tuple[torch.Tensor, ...]:
        """The compressed arrays of a `[out, in]` weight, in `parts` order."""

    @abstractmethod
    def decompress(
        self,
        arrays: Sequence[torch.Tensor],
        shape: tuple[int, int] | torch.Size,
        pattern: SparsityPattern,
    ) -> torch.Tensor:
        """The dense `[out, in]` weight of `compress`'s arrays (zeros where nothing is kept)."""

    @abstractmethod
    def call_args(
        self,
        x: Any,
        arrays: Sequence[Any],
        bias: Any,
        shape: tuple[int, int],
        pattern: SparsityPattern,
    ) -> tuple[Any, ...]:
        """The op's arguments for input `x`, compressed `arrays` (tensors or graph nodes)."""

    @abstractmethod
    def static_call(self, args: Sequence[Any], shape_of: Any) -> StaticCall:
        """The static part of a call with `args`; `shape_of(arg)` gives an array's shape."""

    @staticmethod
    @abstractmethod
    def onnx_translation(*args: Any, **kwargs: Any) -> Any:
        """The op as ONNX nodes, for `torch.onnx.export(custom_translation_table=...)`.

        A plain function with the op's parameters, in order and with its defaults; those
        annotated `int` become ONNX attributes. onnxscript traces it, so it builds nodes
        with `sparsec.ops._onnx_nodes.op` (imported inside: exporting loads onnxscript,
        importing sparsec does not).
        """

    @abstractmethod
    def kernel_operands(
        self, call: StaticCall, args: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Block-sparse `(values, cols, crow)` and the bias, from the op's args after x."""

    def __repr__(self) -> str:
        return self.name


class _Blocked(SparseFormat):
    """CSR and BSR: `(values, col_indices, crow_indices)` with r×c blocks (1×1 for CSR)."""

    parts = ("values", "indices", "pointers")

    def call_args(
        self,
        x: Any,
        arrays: Sequence[Any],
        bias: Any,
        shape: tuple[int, int],
        pattern: SparsityPattern,
    ) -> tuple[Any, ...]:
        return (x, *arrays, bias, shape[0], shape[1])

    def static_call(self, args: Sequence[Any], shape_of: Any) -> StaticCall:
        values = shape_of(args[1])
        block = (int(values[1]), int(values[2])) if len(values) == 3 else (1, 1)
        return StaticCall(int(args[5]), int(args[6]), block)

    def kernel_operands(
        self, call: StaticCall, args: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        values, cols, crow, bias = args[0], args[1], args[2], args[3]
        return values, cols.to(torch.int64), crow.to(torch.int64), bias


class CSR(_Blocked):
    name = "csr"

    @property
    def op(self) -> Any:
        return torch.ops.sparsec.csr_linear.default

    def fits(self, pattern: SparsityPattern) -> bool:
        return True  # any mask, element by element

    def compress(
        self, weight: torch.Tensor, mask: torch.Tensor | None, pattern: SparsityPattern
    ) -> tuple[torch.Tensor, ...]:
        return to_csr(weight, mask)

    def decompress(
        self,
        arrays: Sequence[torch.Tensor],
        shape: tuple[int, int] | torch.Size,
        pattern: SparsityPattern,
    ) -> torch.Tensor:
        values, col_indices, crow_indices = arrays
        return from_csr(values, col_indices, crow_indices, shape)

    @staticmethod
    def onnx_translation(
        x: Any,
        values: Any,
        col_indices: Any,
        crow_indices: Any,
        bias: Any = None,
        out_features: int = 0,
        in_features: int = 0,
    ) -> Any:
        """Scatter the values at (row, column) into a zero `[out, in]` weight."""
        from sparsec.ops._onnx_nodes import dense_linear, scatter_rows

        weight = scatter_rows(values, col_indices, crow_indices, (out_features, in_features))
        return dense_linear(x, weight, bias)


class BSR(_Blocked):
    name = "bsr"

    @property
    def op(self) -> Any:
        return torch.ops.sparsec.bsr_linear.default

    def fits(self, pattern: SparsityPattern) -> bool:
        return pattern.kind == "block" and pattern.block != (1, 1)

    def compress(
        self, weight: torch.Tensor, mask: torch.Tensor | None, pattern: SparsityPattern
    ) -> tuple[torch.Tensor, ...]:
        return to_bsr(weight, pattern.block, mask)

    def decompress(
        self,
        arrays: Sequence[torch.Tensor],
        shape: tuple[int, int] | torch.Size,
        pattern: SparsityPattern,
    ) -> torch.Tensor:
        values, col_indices, crow_indices = arrays
        return from_bsr(values, col_indices, crow_indices, shape)

    @staticmethod
    def onnx_translation(
        x: Any,
        values: Any,
        col_indices: Any,
        crow_indices: Any,
        bias: Any = None,
        out_features: int = 0,
        in_features: int = 0,
    ) -> Any:
        """Scatter the r×c blocks into `[out/r, in/c, r, c]`, then lay them out as `[out, in]`."""
        from sparsec.ops._onnx_nodes import dense_linear, ints, op, scatter_rows

        r, c = int(values.shape[1]), int(values.shape[2])
        grid = (out_features // r, in_features // c, r, c)
        blocks = scatter_rows(values, col_indices, crow_indices, grid)
        weight = op.Reshape(
            op.Transpose(blocks, perm=[0, 2, 1, 3]), ints(out_features, in_features)
        )
        return dense_linear(x, weight, bias)


class NM(SparseFormat):
    """N:M along the input axis: `(values, indices)`, n slots per group of m."""

    name = "nm"
    parts = ("values", "indices")

    @property
    def op(self) -> Any:
        return torch.ops.sparsec.nm_linear.default

    def fits(self, pattern: SparsityPattern) -> bool:
        return pattern.kind == "nm"

    def compress(
        self, weight: torch.Tensor, mask: torch.Tensor | None, pattern: SparsityPattern
    ) -> tuple[torch.Tensor, ...]:
        return to_nm(weight, pattern.n, pattern.m, mask)

    def decompress(
        self,
        arrays: Sequence[torch.Tensor],
        shape: tuple[int, int] | torch.Size,
        pattern: SparsityPattern,
    ) -> torch.Tensor:
        values, indices = arrays
        return from_nm(values, indices, pattern.n, pattern.m)

    def call_args(
        self,
        x: Any,
        arrays: Sequence[Any],
        bias: Any,
        shape: tuple[int, int],
        pattern: SparsityPattern,
    ) -> tuple[Any, ...]:
        return (x, *arrays, bias, pattern.n, pattern.m)

    def static_call(self, args: Sequence[Any], shape_of: Any) -> StaticCall:
        out_features, kept = shape_of(args[1])
        n, m = int(args[4]), int(args[5])
        return StaticCall(int(out_features), int(kept) * m // n, (1, 1), (n, m))

    @staticmethod
    def onnx_translation(
        x: Any, values: Any, indices: Any, bias: Any = None, n: int = 2, m: int = 4
    ) -> Any:
        """Scatter slot k of a row to column `k // n * m + indices[k]` of a zero weight."""
        from sparsec.ops._onnx_nodes import dense_linear, op, zeros

        out_features, slots = int(values.shape[0]), int(values.shape[1])
        slot = op.Range(
            op.Constant(value_int=0), op.Constant(value_int=slots), op.Constant(value_int=1)
        )
        group_start = op.Mul(op.Div(slot, op.Constant(value_int=n)), op.Constant(value_int=m))
        columns = op.Add(group_start, op.Cast(indices, to=7))  # 7: INT64
        weight = op.ScatterElements(zeros(values, out_features, slots // n * m), columns, values, axis=1)
        return dense_linear(x, weight, bias)

    def kernel_operands(
        self, call: StaticCall, args: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each row keeps `kept` slots; slot k of a row lies in group k // n."""
        if call.nm is None:
            raise ValueError(f"an N:M call needs its (n, m): {call}")
        n, m = call.nm
        values, indices, bias = args[0], args[1], args[2]
        kept = indices.shape[1]
        group_base = torch.arange(kept, dtype=torch.int64) // n * m
        cols = (indices.to(torch.int64) + group_base).reshape(-1)
        crow = torch.arange(call.out_features + 1, dtype=torch.int64) * kept
        return values, cols, crow, bias


FORMATS: dict[str, SparseFormat] = {fmt.name: fmt for fmt in (CSR(), BSR(), NM())}


def natural_format(pattern: SparsityPattern) -> SparseFormat:
    """The format a mask pattern calls for: N:M for nm, BSR for blocks, else CSR."""
    return next(fmt for fmt in (FORMATS["nm"], FORMATS["bsr"], FORMATS["csr"]) if fmt.fits(pattern))


def format_of(op: Any) -> SparseFormat | None:
    """The format whose op `op` is (an OpOverload), or None."""
    return next((fmt for fmt in FORMATS.values() if fmt.op is op), None)
