"""Read an ONNX model and refuse, before anything is traced or written, what cannot be imported.

Rules:
- a missing, truncated or non-ONNX file, and a model whose external data file is missing,
  are `OnnxImportError`s naming the file and the fix;
- opsets below 13 are refused with the `onnx.version_converter` call that upgrades them;
- a quantized model (QDQ or integer ops) is refused: prune the float model, then quantize
  with sparsec's prune → INT8 path (`backend_options={"quantize": "static"}`);
- every node without a handler is listed, each with its node name, in one error;
- control flow (If, Loop, Scan) is listed like any op without a handler.

Example:
    model = load_model("model.onnx")
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

import sparsec.frontends.onnx._ops_microsoft  # noqa: F401 - registers handlers
import sparsec.frontends.onnx._ops_standard  # noqa: F401 - registers handlers
from sparsec.errors import OnnxImportError
from sparsec.frontends.onnx._prepare import PREPARED_OPS, unsupported_form
from sparsec.frontends.onnx._registry import handler_for

__all__ = ["MIN_OPSET", "OnnxSource", "is_onnx_source", "load_model", "opset_of"]

MIN_OPSET = 13
OnnxSource = str | Path | onnx.ModelProto

_QUANTIZED = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "QLinearAdd", "QLinearMul", "QAttention", "QGemm",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearSigmoid", "QLinearLeakyRelu",
    "MatMulNBits",
}
_HANDLED_BY_LOADER = {("", "Constant")}


def is_onnx_source(model: object) -> bool:
    """A path ending in .onnx, or a ModelProto: what `sparsec.compile` takes as ONNX input."""
    if isinstance(model, onnx.ModelProto):
        return True
    return isinstance(model, (str, Path)) and str(model).lower().endswith(".onnx")


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _read(source: OnnxSource) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.is_file():
        raise OnnxImportError(f"{path} does not exist or is not a file. Fix: check the path")
    try:
        return onnx.load(str(path), load_external_data=True)
    except DecodeError as exc:
        raise OnnxImportError(
            f"{path} is not an ONNX model (truncated, or another format): {exc}. Fix: export "
            "it again, or check that the download or copy finished"
        ) from None
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
        raise OnnxImportError(
            f"{path} refers to external weight data that cannot be read: {exc}. Fix: keep the "
            f"data file(s) beside {path.name}, under the names the model records"
        ) from None


def _missing_external_data(model: onnx.ModelProto) -> list[str]:
    return [
        tensor.name
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    ]


def _unsupported(model: onnx.ModelProto) -> list[str]:
    found = []
    initializers = {t.name for t in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        key = (node.domain if node.domain != "ai.onnx" else "", node.op_type)
        domain = f"{node.domain}::" if node.domain else ""
        label = f"{domain}{node.op_type} (node {node.name or f'#{index}'!r})"
        if key in PREPARED_OPS:
            if (why := unsupported_form(node, initializers)) is not None:
                found.append(f"{label}: {why}")
        elif key not in _HANDLED_BY_LOADER and handler_for(*key) is None:
            found.append(label)
    return found


def load_model(source: OnnxSource) -> onnx.ModelProto:
    """The model, checked for what the importer needs (see the module rules)."""
    model = _read(source)
    where = source if not isinstance(source, onnx.ModelProto) else "the ONNX model"
    if not model.graph.node:
        raise OnnxImportError(f"{where} has no nodes; an empty or truncated graph cannot be compiled")
    if missing := _missing_external_data(model):
        raise OnnxImportError(
            f"{where} has weights in external data that were not loaded ({', '.join(missing[:5])}). "
            "Fix: pass the file path, or onnx.load(path, load_external_data=True)"
        )
    opset = opset_of(model)
    if opset < MIN_OPSET:
        raise OnnxImportError(
            f"{where} uses opset {opset}; sparsec imports opset {MIN_OPSET} and later. Fix: "
            f"onnx.save(onnx.version_converter.convert_version(onnx.load(path), {MIN_OPSET + 4}), "
            "new_path) and compile new_path"
        )
    quantized = sorted({node.op_type for node in model.graph.node if node.op_type in _QUANTIZED})
    if quantized:
        raise OnnxImportError(
            f"{where} is already quantized ({', '.join(quantized)}); pruning would have to slice "
            "its scales and zero points. Fix: compile the float model, then quantize the pruned "
            "result with sparsec's prune → INT8 path: backend_options={'quantize': 'static'} "
            "(or 'dynamic')"
        )
    if unsupported := _unsupported(model):
        raise OnnxImportError(
            f"{where} has {len(unsupported)} node(s) the importer cannot represent: "
            f"{'; '.join(unsupported)}. Fix: export the model without these ops (a newer opset, "
            "or the torch model itself), or open an issue naming them"
        )
    return model
