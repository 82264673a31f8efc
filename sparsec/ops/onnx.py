"""ONNX translations of the sparse ops for `torch.onnx.export(custom_translation_table=...)`.

Rules:
- ONNX Runtime has no fast sparse kernel, so each op rebuilds its dense weight inside the
  ONNX graph from the stored values and indices (ScatterND / ScatterElements) and runs one
  MatMul: the file keeps the compressed weights (the artifact stays small), ORT computes the
  same numbers as the reference kernel (its constant folding may densify at load);
- row ids of CSR/BSR come from the row pointers with a scatter-add and a cumulative sum,
  so empty rows and an empty matrix work;
- the static sizes (block shape, out/in features) come from the op's int arguments and the
  initializers' static shapes.

Example:
    torch.onnx.export(program, (), dynamo=True, custom_translation_table=ONNX_TRANSLATIONS)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from onnxscript import opset18 as op

import sparsec.ops._kernels  # noqa: F401 - registers torch.ops.sparsec before we name its ops

__all__ = ["ONNX_TRANSLATIONS"]


def _i64(*values: int) -> Any:
    return op.Constant(value_ints=list(values))


def _row_ids(crow_indices: Any, nnz: Any) -> Any:
    """Row of every stored entry: count the row starts at or before each position."""
    inner = op.Slice(crow_indices, _i64(1), _i64(-1))
    marks = op.ScatterElements(
        op.Expand(op.Constant(value_int=0), op.Add(nnz, _i64(1))),
        inner,
        op.Expand(op.Constant(value_int=1), op.Shape(inner)),
        axis=0,
        reduction="add",
    )
    return op.Slice(op.CumSum(marks, op.Constant(value_int=0)), _i64(0), nnz)


def _dense_linear(x: Any, weight: Any, bias: Any) -> Any:
    y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
    return y if bias is None else op.Add(y, bias)


def _bsr_linear(
    x: Any,
    values: Any,
    col_indices: Any,
    crow_indices: Any,
    bias: Any = None,
    out_features: int = 0,
    in_features: int = 0,
) -> Any:
    r, c = int(values.shape[1]), int(values.shape[2])
    nnz = op.Shape(values, start=0, end=1)
    rows = _row_ids(crow_indices, nnz)
    index = op.Concat(op.Unsqueeze(rows, _i64(1)), op.Unsqueeze(col_indices, _i64(1)), axis=1)
    zeros = op.Expand(
        op.CastLike(op.Constant(value_float=0.0), values),
        _i64(out_features // r, in_features // c, r, c),
    )
    blocks = op.ScatterND(zeros, index, values)
    weight = op.Reshape(op.Transpose(blocks, perm=[0, 2, 1, 3]), _i64(out_features, in_features))
    return _dense_linear(x, weight, bias)


def _csr_linear(
    x: Any,
    values: Any,
    col_indices: Any,
    crow_indices: Any,
    bias: Any = None,
    out_features: int = 0,
    in_features: int = 0,
) -> Any:
    nnz = op.Shape(values, start=0, end=1)
    rows = _row_ids(crow_indices, nnz)
    index = op.Concat(op.Unsqueeze(rows, _i64(1)), op.Unsqueeze(col_indices, _i64(1)), axis=1)
    zeros = op.Expand(
        op.CastLike(op.Constant(value_float=0.0), values), _i64(out_features, in_features)
    )
    return _dense_linear(x, op.ScatterND(zeros, index, values), bias)


def _nm_linear(x: Any, values: Any, indices: Any, bias: Any = None, n: int = 2, m: int = 4) -> Any:
    out_features, slots = int(values.shape[0]), int(values.shape[1])
    slot = op.Range(
        op.Constant(value_int=0), op.Constant(value_int=slots), op.Constant(value_int=1)
    )
    group_start = op.Mul(op.Div(slot, op.Constant(value_int=n)), op.Constant(value_int=m))
    columns = op.Add(group_start, op.Cast(indices, to=7))  # 7: INT64
    zeros = op.Expand(
        op.CastLike(op.Constant(value_float=0.0), values), _i64(out_features, slots // n * m)
    )
    return _dense_linear(x, op.ScatterElements(zeros, columns, values, axis=1), bias)


ONNX_TRANSLATIONS: dict[Any, Callable[..., Any]] = {
    torch.ops.sparsec.bsr_linear.default: _bsr_linear,
    torch.ops.sparsec.csr_linear.default: _csr_linear,
    torch.ops.sparsec.nm_linear.default: _nm_linear,
}
"""OpOverload → translation, for `torch.onnx.export(..., custom_translation_table=...)`."""
