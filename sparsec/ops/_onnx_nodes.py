"""ONNX building blocks that the sparse formats' translations share (onnxscript opset 18).

Rules:
- importing this module loads onnxscript, so a format imports it inside its
  `onnx_translation`, which runs only while `torch.onnx.export` traces: `import sparsec`
  stays free of onnxscript;
- nothing here knows a format: values scattered at CSR-style row pointers and column
  indices, zero tensors, int64 constants, and the dense `x @ W.T + bias` every translation
  ends with.

Example:
    y = dense_linear(x, scatter_rows(values, col_indices, crow_indices, (out, in)), bias)
"""

from __future__ import annotations

from typing import Any

from onnxscript import opset18 as op

__all__ = ["dense_linear", "ints", "op", "row_ids", "scatter_rows", "zeros"]


def ints(*values: int) -> Any:
    """A 1-D int64 constant."""
    return op.Constant(value_ints=list(values))


def row_ids(crow_indices: Any, nnz: Any) -> Any:
    """Row of every stored entry: count the row starts at or before each position.

    A scatter-add of the inner row pointers and a cumulative sum, so empty rows and an empty
    matrix work.
    """
    inner = op.Slice(crow_indices, ints(1), ints(-1))
    marks = op.ScatterElements(
        op.Expand(op.Constant(value_int=0), op.Add(nnz, ints(1))),
        inner,
        op.Expand(op.Constant(value_int=1), op.Shape(inner)),
        axis=0,
        reduction="add",
    )
    return op.Slice(op.CumSum(marks, op.Constant(value_int=0)), ints(0), nnz)


def zeros(like: Any, *dims: int) -> Any:
    """A zero tensor of shape `dims` with the element type of `like`."""
    return op.Expand(op.CastLike(op.Constant(value_float=0.0), like), ints(*dims))


def scatter_rows(values: Any, col_indices: Any, crow_indices: Any, dims: tuple[int, ...]) -> Any:
    """A zero tensor of shape `dims` with stored entry k (a value or a block) at (row, column).

    Rows come from the CSR-style pointers (`row_ids`), columns from `col_indices`; the
    entries are `values`' leading axis.
    """
    rows = row_ids(crow_indices, op.Shape(values, start=0, end=1))
    index = op.Concat(op.Unsqueeze(rows, ints(1)), op.Unsqueeze(col_indices, ints(1)), axis=1)
    return op.ScatterND(zeros(values, *dims), index, values)


def dense_linear(x: Any, weight: Any, bias: Any) -> Any:
    """`x @ weight.T (+ bias)`: one MatMul on the weight rebuilt inside the graph."""
    y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
    return y if bias is None else op.Add(y, bias)
