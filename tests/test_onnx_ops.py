"""Each ONNX op handler against ONNX Runtime on a one-node model (relative 1e-5).

The attribute variants are the ones exporters write and the ones whose semantics differ from
torch's defaults (asymmetric pads, ceil mode, negative steps, axes as inputs, DCR/CRD).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import ValueInfoProto, helper, numpy_helper

from sparsec.frontends.onnx import import_onnx

RNG = np.random.default_rng(0)
F32 = np.float32


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(F32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# (id, op, inputs as (name, array): arrays named "w*" or "c*" become initializers,
#  attributes, opset)
CASES: list[tuple[str, str, list[tuple[str, np.ndarray]], dict[str, Any], int]] = [
    ("hardsigmoid", "HardSigmoid", [("x", _x(2, 5))], {"alpha": 0.3, "beta": 0.4}, 17),
    ("leakyrelu", "LeakyRelu", [("x", _x(2, 5))], {"alpha": 0.2}, 17),
    ("selu", "Selu", [("x", _x(2, 5))], {}, 17),
    ("celu", "Celu", [("x", _x(2, 5))], {"alpha": 0.7}, 17),
    ("prelu", "PRelu", [("x", _x(2, 3, 4)), ("w_slope", _x(3, 1))], {}, 17),
    ("gelu-tanh", "Gelu", [("x", _x(2, 5))], {"approximate": "tanh"}, 20),
    ("clip-inputs", "Clip", [("x", _x(2, 5)), ("c_min", np.array(-0.5, F32)), ("c_max", np.array(0.3, F32))], {}, 17),
    ("mean-variadic", "Mean", [("x", _x(2, 5)), ("y", _x(2, 5)), ("z", _x(1, 5))], {}, 17),
    ("pow", "Pow", [("x", np.abs(_x(2, 5))), ("c_e", np.array(1.7, F32))], {}, 17),
    ("logsoftmax", "LogSoftmax", [("x", _x(2, 3, 5))], {"axis": 1}, 17),
    ("reducemean-attr", "ReduceMean", [("x", _x(2, 3, 5))], {"axes": [1, 2], "keepdims": 0}, 17),
    ("reducesum-input", "ReduceSum", [("x", _x(2, 3, 5)), ("c_axes", _i64(-1))], {"keepdims": 1}, 18),
    ("reducemax-input", "ReduceMax", [("x", _x(2, 3, 5)), ("c_axes", _i64(0))], {"keepdims": 0}, 18),
    ("argmax", "ArgMax", [("x", _x(2, 3, 5))], {"axis": 2, "keepdims": 0}, 17),
    ("flatten-rank", "Flatten", [("x", _x(2, 3, 4))], {"axis": 3}, 17),
    ("slice-negative-step", "Slice", [("x", _x(2, 6, 4)), ("c_s", _i64(-1)), ("c_e", _i64(-100)), ("c_a", _i64(1)), ("c_st", _i64(-2))], {}, 17),
    ("pad-reflect", "Pad", [("x", _x(1, 2, 4, 4)), ("c_pads", _i64(0, 0, 1, 2, 0, 0, 2, 1))], {"mode": "reflect"}, 17),
    ("pad-constant", "Pad", [("x", _x(1, 2, 4, 4)), ("c_pads", _i64(0, 0, 1, 0, 0, 0, 0, 3)), ("c_v", np.array(0.5, F32))], {"mode": "constant"}, 17),
    ("resize-nearest", "Resize", [("x", _x(1, 2, 3, 3)), ("c_roi", np.zeros(0, F32)), ("c_scales", np.array([1, 1, 2, 2], F32))], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 17),
    ("resize-linear", "Resize", [("x", _x(1, 2, 3, 3)), ("c_roi", np.zeros(0, F32)), ("c_scales", np.array([1, 1, 2, 2], F32))], {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, 17),
    ("maxpool-ceil", "MaxPool", [("x", _x(1, 2, 7, 7))], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 17),
    ("avgpool-pads", "AveragePool", [("x", _x(1, 2, 6, 6))], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}, 17),
    ("conv-grouped-asymmetric", "Conv", [("x", _x(1, 4, 7, 7)), ("w", _x(6, 2, 3, 3)), ("w_b", _x(6))], {"group": 2, "pads": [0, 1, 1, 0], "dilations": [1, 2]}, 17),
    ("conv-same-upper", "Conv", [("x", _x(1, 3, 7, 7)), ("w", _x(4, 3, 3, 3))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 17),
    ("convtranspose", "ConvTranspose", [("x", _x(1, 4, 5, 5)), ("w", _x(4, 3, 3, 3))], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 17),
    ("instancenorm", "InstanceNormalization", [("x", _x(2, 3, 4, 4)), ("w_s", _x(3)), ("w_b", _x(3))], {"epsilon": 1e-5}, 17),
    ("groupnorm", "GroupNormalization", [("x", _x(2, 4, 3, 3)), ("w_s", _x(4)), ("w_b", _x(4))], {"num_groups": 2}, 21),
    ("layernorm-axis", "LayerNormalization", [("x", _x(2, 3, 4)), ("w_s", _x(3, 4)), ("w_b", _x(3, 4))], {"axis": 1}, 17),
    ("depthtospace-dcr", "DepthToSpace", [("x", _x(1, 8, 2, 3))], {"blocksize": 2, "mode": "DCR"}, 17),
    ("depthtospace-crd", "DepthToSpace", [("x", _x(1, 8, 2, 3))], {"blocksize": 2, "mode": "CRD"}, 17),
    ("spacetodepth", "SpaceToDepth", [("x", _x(1, 2, 4, 6))], {"blocksize": 2}, 17),
    ("lrn", "LRN", [("x", _x(1, 5, 3, 3))], {"size": 3, "alpha": 1e-3, "beta": 0.75, "bias": 1.5}, 17),
    ("split-num-outputs", "Split", [("x", _x(2, 7))], {"axis": 1, "num_outputs": 3}, 18),
    ("gather-axis1", "Gather", [("x", _x(2, 5, 3)), ("c_i", _i64(4, 0, 2, 2).reshape(2, 2))], {"axis": 1}, 17),
    ("scatternd", "ScatterND", [("x", _x(4, 3)), ("c_i", _i64(2, 0).reshape(2, 1)), ("c_u", _x(2, 3))], {}, 17),
    ("topk", "TopK", [("x", _x(2, 6)), ("c_k", _i64(3))], {"axis": 1}, 17),
    ("cumsum", "CumSum", [("x", _x(2, 5)), ("c_axis", np.array(1, np.int64))], {}, 17),
    ("trilu-lower", "Trilu", [("x", _x(2, 4, 4)), ("c_k", np.array(1, np.int64))], {"upper": 0}, 17),
    ("einsum-matmul", "Einsum", [("x", _x(2, 3, 4)), ("y", _x(2, 4, 5))], {"equation": "bij,bjk->bik"}, 17),
    ("expand-broadcast", "Expand", [("x", _x(3, 1)), ("c_shape", _i64(2, 1, 4))], {}, 17),
    ("tile", "Tile", [("x", _x(2, 3)), ("c_r", _i64(2, 1))], {}, 17),
]


def _model(op: str, inputs: list[tuple[str, np.ndarray]], attrs: dict[str, Any], opset: int) -> Any:
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
        for name, a in inputs if not name.startswith(("w", "c"))
    ]
    initializers = [numpy_helper.from_array(a, name) for name, a in inputs if name.startswith(("w", "c"))]
    outputs = ["out0", "out1", "out2"][: 3 if op == "Split" else 2 if op == "TopK" else 1]
    node = helper.make_node(op, [name for name, _ in inputs], outputs, name="the_node", **attrs)
    graph = helper.make_graph(
        [node], "one", graph_inputs, [ValueInfoProto(name=o) for o in outputs],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_op_matches_onnxruntime(case: tuple[str, str, list[tuple[str, np.ndarray]], dict[str, Any], int]) -> None:
    _, op, inputs, attrs, opset = case
    model = _model(op, inputs, attrs, opset)
    feed = {name: a for name, a in inputs if not name.startswith(("w", "c"))}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    graph = import_onnx(model, {k: torch.from_numpy(v) for k, v in feed.items()}, dynamic=False)
    with torch.no_grad():
        out = graph.module(*graph.example_args)
    actual = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    for e, a in zip(expected, actual, strict=True):
        assert e.shape == a.shape
        assert np.max(np.abs(e.astype(np.float64) - a)) <= 1e-5 * (np.max(np.abs(e)) + 1e-6)
