"""Handlers of the default ONNX domain (opset 13 and later), written with torch functions.

Rules:
- shape arithmetic stays on `Ints` where every operand is `Ints` (see `_values`);
- attributes that moved to inputs across opsets (axes of Squeeze/Unsqueeze/Reduce*, split)
  are read from whichever the node has;
- semantics follow the ONNX operator specification; the importer's tests compare each model
  with ONNX Runtime on the original file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparsec.frontends.onnx._registry import Call, op
from sparsec.frontends.onnx._values import (
    INT_BINARY,
    Ints,
    Value,
    as_ints,
    flat_list,
    ints_op,
    to_tensor,
)

__all__: list[str] = []


# ONNX TensorProto data types → torch dtypes
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


def _t(value: Value) -> torch.Tensor:
    return to_tensor(value)


def _axes(call: Call, given: Value | None) -> list[int] | None:
    """Axes from the input (newer opsets) or the attribute (older ones); None when absent."""
    if given is not None:
        return [int(a) for a in as_ints(given, f"axes of {call.node.label}")]
    attr = call.attr("axes")
    return None if attr is None else [int(a) for a in attr]


# --- elementwise ---------------------------------------------------------------------------

_UNARY = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin,
    "Cos": torch.cos, "Not": torch.logical_not, "Softplus": F.softplus, "Sign": torch.sign,
    "Round": torch.round, "HardSwish": F.hardswish, "Mish": F.mish, "IsNaN": torch.isnan,
    "Tan": torch.tan, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos,
    "Sinh": torch.sinh, "Cosh": torch.cosh, "Softsign": F.softsign, "Selu": F.selu,
}


def _unary(call: Call, x: Value) -> Value:
    return _UNARY[call.node.op_type](_t(x))


op(*_UNARY)(_unary)


@op("Identity")
def _identity(call: Call, x: Value) -> Value:
    return x


@op("Dropout")
def _dropout(call: Call, x: Value, *rest: Value | None) -> tuple[Value, Value]:
    return x, torch.ones_like(_t(x), dtype=torch.bool)  # inference: no dropout, mask all ones


@op("IsInf")
def _is_inf(call: Call, x: Value) -> Value:
    data = _t(x)
    positive, negative = call.attr("detect_positive", 1), call.attr("detect_negative", 1)
    if positive and negative:
        return torch.isinf(data)
    return torch.isposinf(data) if positive else torch.isneginf(data)


@op("Celu")
def _celu(call: Call, x: Value) -> Value:
    return F.celu(_t(x), call.attr("alpha", 1.0))


@op("PRelu")
def _prelu(call: Call, x: Value, slope: Value) -> Value:
    data, weight = _t(x), _t(slope)
    return torch.where(data >= 0, data, data * weight)


@op("Sum", "Mean")
def _sum(call: Call, *values: Value) -> Value:
    total = _t(values[0])
    for value in values[1:]:
        total = total + _t(value)
    return total / len(values) if call.node.op_type == "Mean" else total


@op("LeakyRelu")
def _leaky_relu(call: Call, x: Value) -> Value:
    return F.leaky_relu(_t(x), call.attr("alpha", 0.01))


@op("Elu")
def _elu(call: Call, x: Value) -> Value:
    return F.elu(_t(x), call.attr("alpha", 1.0))


@op("HardSigmoid")
def _hard_sigmoid(call: Call, x: Value) -> Value:
    alpha, beta = call.attr("alpha", 0.2), call.attr("beta", 0.5)
    return torch.clamp(_t(x) * alpha + beta, 0.0, 1.0)


@op("Gelu")
def _gelu(call: Call, x: Value) -> Value:
    return F.gelu(_t(x), approximate=call.attr("approximate", "none"))


@op("Clip")
def _clip(call: Call, x: Value, low: Value | None = None, high: Value | None = None) -> Value:
    minimum = call.attr("min") if low is None else _scalar(low)
    maximum = call.attr("max") if high is None else _scalar(high)
    return torch.clamp(_t(x), minimum, maximum)


def _scalar(value: Value) -> Any:
    """A 0-d or 1-element constant as a Python number (bounds, fill values)."""
    if isinstance(value, Ints):
        return value.values[0]
    return flat_list(value)[0] if value.numel() == 1 else value


def _binary_tensor(op_type: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if op_type == "Div" and not a.dtype.is_floating_point and not b.dtype.is_floating_point:
        return torch.div(a, b, rounding_mode="trunc")
    if op_type == "Mod":
        return torch.remainder(a, b)
    return _BINARY[op_type](a, b)


_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "Max": torch.maximum, "Min": torch.minimum, "Mod": torch.remainder,
}


def _binary(call: Call, *values: Value) -> Value:
    op_type = call.node.op_type
    result = values[0]
    for value in values[1:]:  # Max and Min are variadic
        if isinstance(result, Ints) and isinstance(value, Ints) and op_type in INT_BINARY:
            result = ints_op(INT_BINARY[op_type], result, value)
        else:
            a, b = _t(result), _t(value)
            if op_type == "Pow" and b.dtype != a.dtype:
                b = b.to(a.dtype)  # ONNX Pow keeps the base's type
            result = _binary_tensor(op_type, a, b)
    return result


op(*_BINARY)(_binary)


@op("Where")
def _where(call: Call, condition: Value, a: Value, b: Value) -> Value:
    if isinstance(condition, Ints) and isinstance(a, Ints) and isinstance(b, Ints):
        return Ints(np.where(condition.array.astype(bool), a.array, b.array))
    return torch.where(_t(condition).bool(), _t(a), _t(b))


@op("Cast")
def _cast(call: Call, x: Value) -> Value:
    dtype = DTYPES[int(call.attr("to"))]
    if isinstance(x, Ints) and not dtype.is_floating_point:
        return x
    return _t(x).to(dtype)


@op("CastLike")
def _cast_like(call: Call, x: Value, like: Value) -> Value:
    if isinstance(x, Ints) and isinstance(like, Ints):
        return x
    return _t(x).to(_t(like).dtype)


# --- linear algebra, convolution, normalization --------------------------------------------


@op("MatMul")
def _matmul(call: Call, a: Value, b: Value) -> Value:
    return torch.matmul(_t(a), _t(b))


@op("Gemm")
def _gemm(call: Call, a: Value, b: Value, c: Value | None = None) -> Value:
    left = _t(a).t() if call.attr("transA", 0) else _t(a)
    right = _t(b).t() if call.attr("transB", 0) else _t(b)
    out = torch.matmul(left, right) * call.attr("alpha", 1.0)
    return out if c is None else out + _t(c) * call.attr("beta", 1.0)


@op("Linear", domain="sparsec")
def _linear(call: Call, x: Value) -> Value:
    bias = call.attr("bias")
    return F.linear(_t(x), call.tensor(call.attr("weight")), None if bias is None else call.tensor(bias))


@op("Einsum")
def _einsum(call: Call, *operands: Value) -> Value:
    return torch.einsum(call.attr("equation"), *[_t(v) for v in operands])


def _conv_padding(call: Call, x: torch.Tensor, kernel: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads for the conv itself; asymmetric ones (and SAME_*) padded explicitly."""
    spatial = len(kernel)
    strides = call.attr("strides", [1] * spatial)
    dilations = call.attr("dilations", [1] * spatial)
    auto_pad = call.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for axis in range(spatial):
            size = int(x.shape[2 + axis])
            out = -(-size // strides[axis])
            total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size)
            small, large = total // 2, total - total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else large)
            pads_end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        pads_begin = pads_end = [0] * spatial
    else:
        pads = call.attr("pads", [0] * (2 * spatial))
        pads_begin, pads_end = list(pads[:spatial]), list(pads[spatial:])
    if pads_begin == pads_end:
        return x, pads_begin
    explicit: list[int] = []
    for axis in reversed(range(spatial)):  # F.pad takes the last axis first
        explicit += [pads_begin[axis], pads_end[axis]]
    return F.pad(x, explicit), [0] * spatial


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def _conv(call: Call, x: Value, weight: Value, bias: Value | None = None) -> Value:
    w = _t(weight)
    kernel = call.attr("kernel_shape", list(w.shape[2:]))
    spatial = len(kernel)
    data, padding = _conv_padding(call, _t(x), kernel)
    return _CONV[spatial](
        data, w, None if bias is None else _t(bias), stride=call.attr("strides", [1] * spatial),
        padding=padding, dilation=call.attr("dilations", [1] * spatial), groups=call.attr("group", 1),
    )


@op("ConvTranspose")
def _conv_transpose(call: Call, x: Value, weight: Value, bias: Value | None = None) -> Value:
    w = _t(weight)
    spatial = w.dim() - 2
    pads = call.attr("pads", [0] * (2 * spatial))
    if list(pads[:spatial]) != list(pads[spatial:]) or call.attr("output_shape") is not None:
        raise ValueError(f"{call.node.label}: asymmetric pads or output_shape are not supported")
    return _CONV_T[spatial](
        _t(x), w, None if bias is None else _t(bias), stride=call.attr("strides", [1] * spatial),
        padding=list(pads[:spatial]), output_padding=call.attr("output_padding", [0] * spatial),
        groups=call.attr("group", 1), dilation=call.attr("dilations", [1] * spatial),
    )


@op("BatchNormalization")
def _batch_norm(call: Call, x: Value, scale: Value, bias: Value, mean: Value, var: Value) -> Value:
    return F.batch_norm(
        _t(x), _t(mean), _t(var), _t(scale), _t(bias), False, 0.0, call.attr("epsilon", 1e-5)
    )


@op("LayerNormalization")
def _layer_norm(call: Call, x: Value, scale: Value, bias: Value | None = None) -> Value:
    data = _t(x)
    axis = call.attr("axis", -1) % data.dim()
    return F.layer_norm(
        data, tuple(data.shape[axis:]), _t(scale), None if bias is None else _t(bias),
        call.attr("epsilon", 1e-5),
    )


def rms_norm(x: torch.Tensor, scale: torch.Tensor, axis: int, epsilon: float) -> torch.Tensor:
    """x / sqrt(mean(x², axes from `axis`) + eps) * scale, computed in float32 as ORT does."""
    axes = list(range(axis % x.dim(), x.dim()))
    data = x.float()
    normed = data * torch.rsqrt(data.pow(2).mean(dim=axes, keepdim=True) + epsilon)
    return normed.to(x.dtype) * scale


@op("SimplifiedLayerNormalization", "RMSNormalization")
def _rms_norm(call: Call, x: Value, scale: Value) -> Value:
    return rms_norm(_t(x), _t(scale), call.attr("axis", -1), call.attr("epsilon", 1e-5))


@op("InstanceNormalization")
def _instance_norm(call: Call, x: Value, scale: Value, bias: Value) -> Value:
    return F.instance_norm(_t(x), weight=_t(scale), bias=_t(bias), eps=call.attr("epsilon", 1e-5))


@op("GroupNormalization")
def _group_norm(call: Call, x: Value, scale: Value, bias: Value) -> Value:
    return F.group_norm(_t(x), call.attr("num_groups"), _t(scale), _t(bias), call.attr("epsilon", 1e-5))


@op("Softmax", "LogSoftmax")
def _softmax(call: Call, x: Value) -> Value:
    fn = F.softmax if call.node.op_type == "Softmax" else F.log_softmax
    return fn(_t(x), dim=call.attr("axis", -1))


# --- pooling ---------------------------------------------------------------------------------


def _pool_args(call: Call) -> tuple[list[int], list[int], list[int]]:
    kernel = list(call.attr("kernel_shape"))
    strides = list(call.attr("strides", [1] * len(kernel)))
    pads = list(call.attr("pads", [0] * (2 * len(kernel))))
    if pads[: len(kernel)] != pads[len(kernel):] or call.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError(f"{call.node.label}: asymmetric or automatic pads are not supported")
    return kernel, strides, pads[: len(kernel)]


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@op("MaxPool")
def _max_pool(call: Call, x: Value) -> Value:
    kernel, strides, pads = _pool_args(call)
    return _MAX_POOL[len(kernel)](
        _t(x), kernel, strides, pads, dilation=call.attr("dilations", [1] * len(kernel)),
        ceil_mode=bool(call.attr("ceil_mode", 0)),
    )


@op("AveragePool")
def _avg_pool(call: Call, x: Value) -> Value:
    kernel, strides, pads = _pool_args(call)
    return _AVG_POOL[len(kernel)](  # type: ignore[operator]
        _t(x), kernel, strides, pads, ceil_mode=bool(call.attr("ceil_mode", 0)),
        count_include_pad=bool(call.attr("count_include_pad", 0)),
    )


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(call: Call, x: Value) -> Value:
    data = _t(x)
    axes = list(range(2, data.dim()))
    if call.node.op_type == "GlobalAveragePool":
        return data.mean(dim=axes, keepdim=True)
    return data.amax(dim=axes, keepdim=True)


# --- reductions ----------------------------------------------------------------------------

_REDUCE = {
    "ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax,
    "ReduceMin": torch.amin, "ReduceProd": None, "ReduceL2": None, "ReduceSumSquare": None,
}


_REDUCE_INTS = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}


def _reduce(call: Call, x: Value, axes_input: Value | None = None) -> Value:
    keep = bool(call.attr("keepdims", 1))
    axes = _axes(call, axes_input)
    if isinstance(x, Ints) and call.node.op_type in _REDUCE_INTS:
        axis = None if not axes else tuple(axes)
        return Ints(_REDUCE_INTS[call.node.op_type](x.array, axis=axis, keepdims=keep))
    data = _t(x)
    if not axes:
        if call.attr("noop_with_empty_axes", 0):
            return data
        axes = list(range(data.dim()))
    op_type = call.node.op_type
    if op_type == "ReduceProd":
        for axis in sorted((a % data.dim() for a in axes), reverse=True):
            data = torch.prod(data, dim=axis, keepdim=keep)
        return data
    if op_type == "ReduceL2":
        return torch.sqrt(torch.sum(data * data, dim=axes, keepdim=keep))
    if op_type == "ReduceSumSquare":
        return torch.sum(data * data, dim=axes, keepdim=keep)
    fn = _REDUCE[op_type]
    assert fn is not None
    return fn(data, dim=axes, keepdim=keep)


op(*_REDUCE)(_reduce)


@op("ArgMax", "ArgMin")
def _arg(call: Call, x: Value) -> Value:
    fn = torch.argmax if call.node.op_type == "ArgMax" else torch.argmin
    return fn(_t(x), dim=call.attr("axis", 0), keepdim=bool(call.attr("keepdims", 1)))


@op("CumSum")
def _cumsum(call: Call, x: Value, axis: Value) -> Value:
    if call.attr("exclusive", 0) or call.attr("reverse", 0):
        raise ValueError(f"{call.node.label}: exclusive or reverse CumSum is not supported")
    return torch.cumsum(_t(x), dim=int(as_ints(axis, "CumSum axis")[0]))


# --- shapes ----------------------------------------------------------------------------------


@op("Shape")
def _shape(call: Call, x: Value) -> Value:
    dims = tuple(x.shape)
    start, end = call.attr("start", 0), call.attr("end", len(dims))
    return Ints.of(dims[start:end])


@op("Size")
def _size(call: Call, x: Value) -> Value:
    return Ints.of((math.prod(x.shape) if isinstance(x, Ints) else x.numel(),), scalar=True)


@op("Reshape")
def _reshape(call: Call, x: Value, shape: Value) -> Value:
    dims = list(as_ints(shape, f"the target shape of {call.node.label}"))
    if not call.attr("allowzero", 0):
        dims = [x.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
    if isinstance(x, Ints):
        return Ints(x.array.reshape([int(d) for d in dims]))
    return torch.reshape(x, dims)


@op("Flatten")
def _flatten(call: Call, x: Value) -> Value:
    data = _t(x)
    axis = call.attr("axis", 1)
    axis = axis + data.dim() if axis < 0 else axis  # axis == rank is valid: [prod, 1]
    return data.reshape(math.prod(data.shape[:axis]), -1) if axis else data.reshape(1, -1)


@op("Transpose")
def _transpose(call: Call, x: Value) -> Value:
    perm = call.attr("perm", list(reversed(range(x.dim()))))
    return Ints(x.array.transpose(perm)) if isinstance(x, Ints) else x.permute(*perm)


@op("Squeeze")
def _squeeze(call: Call, x: Value, axes: Value | None = None) -> Value:
    dims = _axes(call, axes)
    if isinstance(x, Ints):
        return Ints(np.squeeze(x.array, axis=None if dims is None else tuple(dims)))
    if dims is None:
        return torch.squeeze(x)
    return torch.squeeze(x, dim=tuple(d % x.dim() for d in dims))


@op("Unsqueeze")
def _unsqueeze(call: Call, x: Value, axes: Value | None = None) -> Value:
    dims = _axes(call, axes) or []
    rank = x.dim() + len(dims)
    if isinstance(x, Ints):
        return Ints(np.expand_dims(x.array, tuple(sorted(d % rank for d in dims))))
    for axis in sorted(d % rank for d in dims):
        x = x.unsqueeze(axis)
    return x


@op("Concat")
def _concat(call: Call, *values: Value) -> Value:
    if all(isinstance(v, Ints) for v in values):
        return Ints(np.concatenate([v.array for v in values], axis=call.attr("axis")))  # type: ignore[union-attr]
    return torch.cat([_t(v) for v in values], dim=call.attr("axis"))


@op("Split")
def _split(call: Call, x: Value, split: Value | None = None) -> tuple[Value, ...]:
    data = _t(x)
    axis = call.attr("axis", 0)
    sizes = list(as_ints(split, f"split of {call.node.label}")) if split is not None else call.attr("split")
    if not sizes:
        parts = call.attr("num_outputs", len(call.node.outputs))
        sizes = [-(-int(data.shape[axis]) // parts)] * parts
        sizes[-1] = int(data.shape[axis]) - sizes[0] * (parts - 1)
    return tuple(torch.split(data, [int(s) for s in sizes], dim=axis))


def _slice_bounds(value: Value | None, what: str) -> list[Any]:
    return list(as_ints(value, what))


@op("Slice")
def _slice(
    call: Call, x: Value, starts: Value, ends: Value,
    axes: Value | None = None, steps: Value | None = None,
) -> Value:
    begin = _slice_bounds(starts, f"starts of {call.node.label}")
    end = _slice_bounds(ends, f"ends of {call.node.label}")
    rank = x.dim()
    axis_list = [int(a) % rank for a in _slice_bounds(axes, "axes")] if axes is not None else list(range(len(begin)))
    step_list = _slice_bounds(steps, "steps") if steps is not None else [1] * len(begin)
    if isinstance(x, Ints):
        picked: list[slice] = [slice(None)] * x.dim()
        for axis, b, e, step in zip(axis_list, begin, end, step_list, strict=True):
            picked[axis] = slice(*_python_bounds(b, e, step))
        return Ints(x.array[tuple(picked)])
    index: list[slice] = [slice(None)] * x.dim()
    for axis, b, e, step in zip(axis_list, begin, end, step_list, strict=True):
        if int(step) > 0:
            index[axis] = slice(*_python_bounds(b, e, step))
            continue
        if not isinstance(x.shape[axis], int):  # a reversal: torch slices take positive steps
            raise ValueError(f"{call.node.label}: a negative step along a dynamic dim is not supported")
        picked = list(range(x.shape[axis]))[slice(*_python_bounds(b, e, step))]
        x = torch.index_select(x, axis, torch.tensor(picked, dtype=torch.int64))
    return x[tuple(index)]


def _python_bounds(begin: Any, end: Any, step: Any) -> tuple[Any, Any, Any]:
    """ONNX writes INT64 extremes for "to the end"; Python slicing clamps everything else."""
    big = 2**62
    return (
        None if isinstance(begin, int) and abs(begin) >= big else begin,
        None if isinstance(end, int) and abs(end) >= big else end,
        step,
    )


@op("Gather")
def _gather(call: Call, data: Value, indices: Value) -> Value:
    axis = call.attr("axis", 0)
    if isinstance(data, Ints) and isinstance(indices, Ints):
        return Ints(np.take(data.array, indices.array.astype(np.int64), axis=axis))
    data = _t(data)
    if isinstance(indices, Ints):
        if indices.scalar:
            return data.select(axis, int(indices.values[0]))
        flat = torch.tensor([int(i) for i in indices.values], dtype=torch.int64)
        picked = torch.index_select(data, axis, flat)
        return picked.reshape(*data.shape[:axis], *indices.shape, *data.shape[axis + 1:])
    if axis == 0 and data.dim() == 2 and data.dtype.is_floating_point and not indices.dtype.is_floating_point:
        return F.embedding(indices, data)  # a table lookup: the op torch models write
    index: list[Any] = [slice(None)] * axis
    return data[(*index, indices)]


@op("GatherND")
def _gather_nd(call: Call, data: Value, indices: Value) -> Value:
    if call.attr("batch_dims", 0):
        raise ValueError(f"{call.node.label}: batch_dims > 0 is not supported")
    index = _t(indices)
    return _t(data)[tuple(index[..., i] for i in range(index.shape[-1]))]


@op("ScatterND")
def _scatter_nd(call: Call, data: Value, indices: Value, updates: Value) -> Value:
    if call.attr("reduction", "none") != "none":
        raise ValueError(f"{call.node.label}: reductions other than 'none' are not supported")
    index = _t(indices)
    return _t(data).index_put(tuple(index[..., i] for i in range(index.shape[-1])), _t(updates))


@op("TopK")
def _top_k(call: Call, x: Value, k: Value) -> tuple[Value, Value]:
    count = int(as_ints(k, f"k of {call.node.label}")[0])
    values, indices = torch.topk(
        _t(x), count, dim=call.attr("axis", -1), largest=bool(call.attr("largest", 1)),
        sorted=bool(call.attr("sorted", 1)),
    )
    return values, indices


@op("DepthToSpace", "SpaceToDepth")
def _depth_to_space(call: Call, x: Value) -> Value:
    data, block = _t(x), call.attr("blocksize")
    if call.node.op_type == "SpaceToDepth":  # block offsets major, channels minor (ONNX order)
        batch, channels, height, width = data.shape
        out = data.reshape(batch, channels, height // block, block, width // block, block)
        return out.permute(0, 3, 5, 1, 2, 4).reshape(batch, channels * block * block, height // block, width // block)
    if call.attr("mode", "DCR") == "CRD":
        return F.pixel_shuffle(data, block)
    batch, channels, height, width = data.shape
    out = data.reshape(batch, block, block, channels // (block * block), height, width)
    return out.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels // (block * block), height * block, width * block)


@op("LRN")
def _lrn(call: Call, x: Value) -> Value:
    return F.local_response_norm(
        _t(x), call.attr("size"), call.attr("alpha", 1e-4), call.attr("beta", 0.75), call.attr("bias", 1.0)
    )


@op("GatherElements")
def _gather_elements(call: Call, data: Value, indices: Value) -> Value:
    return torch.gather(_t(data), call.attr("axis", 0), _t(indices))


@op("Expand")
def _expand(call: Call, x: Value, shape: Value) -> Value:
    target = list(as_ints(shape, f"the shape of {call.node.label}"))
    rank = max(len(target), x.dim())
    target = [1] * (rank - len(target)) + target
    current = [1] * (rank - x.dim()) + list(x.shape)
    sizes = [c if isinstance(t, int) and t == 1 else t for c, t in zip(current, target, strict=True)]
    if isinstance(x, Ints) and all(isinstance(s, int) for s in sizes):
        return Ints(np.broadcast_to(x.array.reshape(current), sizes).copy())
    return _t(x).reshape(current).expand(sizes)


@op("Tile")
def _tile(call: Call, x: Value, repeats: Value) -> Value:
    counts = as_ints(repeats, f"repeats of {call.node.label}")
    if isinstance(x, Ints) and all(isinstance(c, int) for c in counts):
        return Ints(np.tile(x.array, counts))
    return _t(x).repeat(*counts)


@op("ConstantOfShape")
def _constant_of_shape(call: Call, shape: Value) -> Value:
    value = call.attr("value")
    fill, dtype = (flat_list(value)[0], value.dtype) if isinstance(value, torch.Tensor) else (0.0, torch.float32)
    dims = as_ints(shape, f"the shape of {call.node.label}")
    if not dtype.is_floating_point and all(isinstance(d, int) for d in dims) and math.prod(dims) <= 1024:
        return Ints(np.full(tuple(int(d) for d in dims), int(fill), dtype=object))
    return torch.full(tuple(dims), fill, dtype=dtype)


@op("Range")
def _range(call: Call, start: Value, limit: Value, delta: Value) -> Value:
    if all(isinstance(v, Ints) for v in (start, limit, delta)):
        return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), dtype=torch.int64)
    first = _t(start)
    return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), dtype=first.dtype)


@op("Trilu")
def _trilu(call: Call, x: Value, k: Value | None = None) -> Value:
    diagonal = int(_scalar(k)) if k is not None else 0
    return torch.triu(_t(x), diagonal) if call.attr("upper", 1) else torch.tril(_t(x), diagonal)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@op("Pad")
def _pad(
    call: Call, x: Value, pads: Value, value: Value | None = None, axes: Value | None = None
) -> Value:
    data = _t(x)
    amounts = [int(p) for p in as_ints(pads, f"pads of {call.node.label}")]
    axis_list = (
        [int(a) % data.dim() for a in as_ints(axes, "axes")] if axes is not None else list(range(data.dim()))
    )
    half = len(amounts) // 2
    by_axis = {axis: (amounts[i], amounts[half + i]) for i, axis in enumerate(axis_list)}
    explicit: list[int] = []
    for axis in reversed(range(min(by_axis, default=data.dim()), data.dim())):
        explicit += list(by_axis.get(axis, (0, 0)))
    while len(explicit) > 2 and explicit[-2:] == [0, 0]:  # F.pad's non-constant modes take
        explicit = explicit[:-2]  # only the innermost dims: drop unpadded outer ones
    mode = _PAD_MODES[call.attr("mode", "constant")]
    fill = 0.0 if value is None else float(_scalar(value))
    return F.pad(data, explicit, mode=mode, value=fill) if mode == "constant" else F.pad(data, explicit, mode=mode)


@op("Resize", "Upsample")
def _resize(
    call: Call, x: Value, roi: Value | None = None, scales: Value | None = None, sizes: Value | None = None
) -> Value:
    data = _t(x)
    if call.node.op_type == "Upsample":
        scales, roi = roi, None
    mode = call.attr("mode", "nearest")
    transform = call.attr("coordinate_transformation_mode", "half_pixel")
    kwargs: dict[str, Any] = {}
    if sizes is not None and len(as_ints(sizes, "sizes")) > 0:
        kwargs["size"] = [int(s) for s in as_ints(sizes, "sizes")[2:]]
    else:
        factors = flat_list(_t(scales)) if scales is not None else []
        kwargs["scale_factor"] = [float(f) for f in factors[2:]]
    if mode == "nearest":
        nearest = {"asymmetric": "nearest", "half_pixel": "nearest-exact", "pytorch_half_pixel": "nearest-exact"}
        if transform not in nearest:
            raise ValueError(f"{call.node.label}: nearest resize with {transform!r} coordinates is not supported")
        return F.interpolate(data, mode=nearest[transform], **kwargs)
    modes = {3: "linear", 4: "bilinear", 5: "trilinear"}
    if mode != "linear" or data.dim() not in modes:
        raise ValueError(f"{call.node.label}: resize mode {mode!r} is not supported")
    if transform not in ("align_corners", "half_pixel", "pytorch_half_pixel"):
        raise ValueError(f"{call.node.label}: linear resize with {transform!r} coordinates is not supported")
    return F.interpolate(data, mode=modes[data.dim()], align_corners=transform == "align_corners", **kwargs)


def constant_value(attrs: dict[str, Any]) -> torch.Tensor:
    """The tensor a Constant node holds, whichever attribute carries it."""
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(list(attrs[key]), dtype=dtype)
    raise ValueError("Constant node without a supported value attribute")


def numpy_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True, order="C"))  # keeps rank 0
