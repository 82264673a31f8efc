"""ONNX building blocks that the sparse formats' translations share (onnxscript opset 18).

Rules:
- importing this module loads onnxscript, so a format imports it inside its
  `onnx_translation`, which runs only while `torch.onnx.export` traces: `import sparsec`
  stays free of onnxscript;
- nothing here knows a format: row ids from CSR-style row pointers, int64 constants, and the
  dense `x @ W.T + bias` every translation ends with.

Example:
    rows = row_ids(crow_indices, op.Shape(values, start=0, end=1))
    y = dense_linear(x, op.ScatterND(zeros, index, values), bias)
"""

from __future__ import annotations

from typing import Any

from onnxscript import opset18 as op

__all__ = ["dense_linear", "ints", "op", "row_ids"]


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


def dense_linear(x: Any, weight: Any, bias: Any) -> Any:
    """`x @ weight.T (+ bias)`: one MatMul on the weight rebuilt inside the graph."""
    y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
    return y if bias is None else op.Add(y, bias)
