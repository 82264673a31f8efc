"""`OnnxModule`: a torch module that runs an ONNX graph with torch functions, to be traced.

Rules:
- initializers become parameters (floating point, rank >= 1) or buffers, registered under
  their ONNX names (each `.`-separated part a submodule), so `encoder.layer.0.query.weight`
  keeps its name in the IR and in reports; characters Python cannot take become `_`;
- small integer initializers and Constant outputs are shape values (`Ints`), not tensors;
- `forward` takes the graph inputs in order, by their ONNX names (keywords work when the
  names are identifiers), and returns one tensor, or a tuple in the graph's output order;
- the module exists to be traced: torch.export turns its Python loop into ATen ops.

Example:
    module = OnnxModule(onnx.load("model.onnx"))
    y = module(torch.randn(1, 3, 32, 32))
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import keyword
import re
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sparsec.errors import OnnxImportError
from sparsec.frontends.onnx._ops_standard import constant_value, numpy_tensor
from sparsec.frontends.onnx._prepare import GENERATED_NAME, prepare
from sparsec.frontends.onnx._registry import Call, NodeCall, handler_for
from sparsec.frontends.onnx._values import Ints, Value, to_tensor
from sparsec.frontends.onnx.load import opset_of

__all__ = ["OnnxModule", "python_name"]

_MAX_SHAPE_VALUES = 64
_REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare")
# inputs read for their values while tracing (sizes, axes, bounds, scales): kept as constants
_STATIC_INPUTS = {
    ("Resize", 1), ("Resize", 2), ("Resize", 3), ("Upsample", 1), ("Pad", 1), ("Pad", 2),
    ("Pad", 3), ("Clip", 1), ("Clip", 2), ("Reshape", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3),
    ("Slice", 4), ("Expand", 1), ("Tile", 1), ("Squeeze", 1), ("Unsqueeze", 1), ("Split", 1),
    ("ConstantOfShape", 0), ("CumSum", 1), ("Trilu", 1), *((r, 1) for r in _REDUCTIONS),
}
# running statistics: state, never trained
_BUFFER_INPUTS = {("BatchNormalization", 3), ("BatchNormalization", 4)}


def python_name(name: str) -> str:
    """An identifier for an ONNX name (`input.1` → `input_1`)."""
    text = re.sub(r"\W", "_", name) or "_"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "_" + text
    return text


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return numpy_tensor(numpy_helper.to_array(value))
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _scope(node: onnx.NodeProto) -> str:
    """The module path of the op: torch.onnx's name scopes (dynamo exporter), or the
    `/encoder/layer.0/query/MatMul` node name (TorchScript exporter); "" when neither."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            with contextlib.suppress(ValueError, SyntaxError):
                scopes = ast.literal_eval(prop.value)
                return str(scopes[-2]) if len(scopes) >= 2 else ""
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return ".".join(node.name.strip("/").split("/")[:-1])
    return ""


def _node_calls(graph: onnx.GraphProto) -> tuple[list[NodeCall], dict[str, torch.Tensor]]:
    """The nodes to interpret, and the tensors of Constant nodes (folded out of the list)."""
    calls: list[NodeCall] = []
    constants: dict[str, torch.Tensor] = {}
    for index, node in enumerate(graph.node):
        attrs = {attr.name: _attribute(attr) for attr in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = constant_value(attrs)
            continue
        calls.append(
            NodeCall(node.name or f"{node.op_type}_{index}", node.domain if node.domain != "ai.onnx" else "",
                     node.op_type, tuple(node.input), tuple(node.output), attrs, _scope(node))
        )
    return calls, constants


def _is_shape_value(tensor: torch.Tensor) -> bool:
    return not tensor.dtype.is_floating_point and tensor.dtype != torch.bool and tensor.numel() <= _MAX_SHAPE_VALUES


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch module (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, display_name: str = "onnx") -> None:
        super().__init__()
        graph = model.graph
        self.display_name = display_name
        self.opset = opset_of(model)
        initializers = {t.name: numpy_tensor(numpy_helper.to_array(t)) for t in graph.initializer}
        calls, constants = _node_calls(graph)
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        self._nodes, tensors = prepare(calls, {**initializers, **constants}, self.output_names)
        self._shape_values: dict[str, Ints] = {}
        self._static: dict[str, torch.Tensor] = {}  # constants read for their values
        self._paths: dict[str, str] = {}  # ONNX name → parameter/buffer path
        readers: dict[str, set[tuple[str, int]]] = {}
        for node in self._nodes:
            for position, name in enumerate(node.inputs):
                readers.setdefault(name, set()).add((node.op_type, position))
        for name, tensor in tensors.items():
            uses = readers.get(name, set())
            if _is_shape_value(tensor):
                self._shape_values[name] = Ints(np.array(tensor.tolist(), dtype=object))
            elif uses and uses <= _STATIC_INPUTS:
                self._static[name] = tensor
            else:
                self._register(name, tensor, trainable=not uses & _BUFFER_INPUTS)
        self._set_signature()

    def _register(self, name: str, tensor: torch.Tensor, trainable: bool) -> None:
        """A parameter (trainable floating point, rank >= 1) or buffer under its ONNX name.

        Names the exporter invented go under `initializers.`: they would collide with the
        names torch.onnx invents when the graph is exported again (`val_12`); so does a
        name whose prefix is already a tensor (`a` and `a.b`).
        """
        namespaced = f"initializers.{python_name(name)}"
        for path in (name, namespaced) if not GENERATED_NAME.match(name) else (namespaced,):
            parts = [part if part.isdigit() else python_name(part) for part in path.split(".")]
            owner = self._owner(parts[:-1])
            if owner is None:
                continue
            leaf = parts[-1]
            while hasattr(owner, leaf):
                leaf = f"{leaf}_"
            if trainable and tensor.dtype.is_floating_point and tensor.dim() >= 1:
                owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=True))
            else:
                owner.register_buffer(leaf, tensor)
            self._paths[name] = ".".join([*parts[:-1], leaf])
            return

    def _owner(self, parts: list[str]) -> torch.nn.Module | None:
        """The submodule at `parts`, created as needed; None where a tensor holds the name."""
        owner: torch.nn.Module = self
        for part in parts:
            child = owner._modules.get(part)
            if child is None:
                if hasattr(owner, part):
                    return None
                child = torch.nn.Module()
                owner.add_module(part, child)
            owner = child
        return owner

    def _set_signature(self) -> None:
        """forward(self, <input names>): torch.export names the graph inputs after these."""
        names = [python_name(name) for name in self.input_names]
        parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names
        ]

        def forward(module: OnnxModule, *args: Any, **kwargs: Any) -> Any:
            bound = inspect.Signature(parameters[1:]).bind(*args, **kwargs)
            return module.run([bound.arguments[name] for name in names])

        forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        self.forward = types.MethodType(forward, self)  # type: ignore[method-assign]

    def tensor(self, name: str) -> torch.Tensor:
        """A registered parameter or buffer by its ONNX name."""
        target: Any = self
        for part in self._paths[name].split("."):
            target = getattr(target, part)
        return target

    def run(self, inputs: Sequence[torch.Tensor]) -> Any:
        """Interpret the graph on `inputs` (graph input order)."""
        env: dict[str, Value | None] = {**self._shape_values, **self._static}
        env.update({name: self.tensor(name) for name in self._paths})
        env.update(zip(self.input_names, inputs, strict=True))
        for node in self._nodes:
            handler = handler_for(node.domain, node.op_type)
            if handler is None:  # load_model refuses these before a module is built
                raise RuntimeError(f"no handler for {node.label}")
            args = [env[name] if name else None for name in node.inputs]
            try:
                result = handler(Call(node, self.opset, self.tensor), *args)
            except (ValueError, TypeError, IndexError, RuntimeError) as exc:
                raise OnnxImportError(f"{node.label} could not be imported: {exc}") from exc
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    env[name] = value
        outputs = [to_tensor(env[name]) for name in self.output_names]  # type: ignore[arg-type]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
