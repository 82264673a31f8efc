"""Trace an ONNX model into a sparsec Graph: example inputs, dynamic dims, torch.export.

Rules:
- dims the file names (`batch_size`, `sequence_length`) stay dynamic under those names, so
  the ONNX written back has the same dynamic axes; fixed dims stay fixed;
- without example inputs, a named dim is given an example size only where its meaning is
  clear (axis 0: batch; axis 1 of an integer input: sequence); any other unknown dim is an
  `OnnxImportError` asking for example inputs;
- example integer inputs that index a table (token ids) are drawn below the table's rows;
  inputs named like masks are ones;
- a dim that torch.export finds fixed by the model (a position table sized to the sequence)
  is traced static, and the report says which;
- the graph's inputs and outputs keep the ONNX names and order.

Example:
    graph, module = trace_onnx("model.onnx", None)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch.export import Dim

from sparsec.errors import OnnxImportError
from sparsec.frontends.onnx._ops_standard import DTYPES
from sparsec.frontends.onnx.load import OnnxSource, load_model
from sparsec.frontends.onnx.module import OnnxModule, python_name
from sparsec.frontends.torch_frontend import drop_guards, own_tensors, suggested_bounds, trace_error
from sparsec.ir.graph import Graph, InputSpec

__all__ = ["OnnxProgram", "import_onnx", "trace_onnx"]

_EXAMPLE_BATCH = 2
_EXAMPLE_SEQUENCE = 8
_FIXED = re.compile(r"^\s*(\w+) = (\d+)\s*$", re.MULTILINE)


class OnnxProgram:
    """An imported ONNX model: the module to trace and what its graph declares."""

    def __init__(self, source: OnnxSource) -> None:
        self.model = load_model(source)
        name = Path(source).name if not isinstance(source, onnx.ModelProto) else (self.model.graph.name or "onnx")
        self.module = OnnxModule(self.model, display_name=name)
        initializers = {t.name for t in self.model.graph.initializer}
        self.inputs = [v for v in self.model.graph.input if v.name not in initializers]

    def dims(self, value: onnx.ValueInfoProto) -> list[int | str | None]:
        """Each dim of an input: its size, its name, or None when the file says neither."""
        shape = value.type.tensor_type.shape
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim
        ]

    def dtype(self, value: onnx.ValueInfoProto) -> torch.dtype:
        elem = value.type.tensor_type.elem_type
        if elem not in DTYPES:
            raise OnnxImportError(f"input {value.name!r} has ONNX element type {elem}, which sparsec does not take")
        return DTYPES[elem]

    def table_rows(self, input_name: str) -> int | None:
        """Rows of the tables an integer input indexes (Gather on an initializer), if any."""
        sizes = {t.name: t.dims[0] for t in self.model.graph.initializer if t.dims}
        readers = [input_name]
        rows = []
        for node in self.model.graph.node:
            if any(name in readers for name in node.input):
                if node.op_type in ("Cast", "Unsqueeze", "Reshape"):
                    readers.append(node.output[0])
                elif node.op_type == "Gather" and node.input[0] in sizes and node.input[1] in readers:
                    rows.append(sizes[node.input[0]])
                elif node.op_type == "EmbedLayerNormalization" and len(node.input) > 2:
                    position = list(node.input).index(next(n for n in node.input if n in readers))
                    table = node.input[2] if position == 0 else node.input[4] if position == 1 else ""
                    if table in sizes:
                        rows.append(sizes[table])
        return min(rows) if rows else None

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs made from the declared types (see the module rules)."""
        generator = torch.Generator().manual_seed(0)
        tensors = []
        for value in self.inputs:
            dtype = self.dtype(value)
            shape = []
            for axis, dim in enumerate(self.dims(value)):
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                elif axis == 0:
                    shape.append(_EXAMPLE_BATCH)
                elif axis == 1 and not dtype.is_floating_point:
                    shape.append(_EXAMPLE_SEQUENCE)
                else:
                    raise OnnxImportError(
                        f"input {value.name!r} has a dim {dim or '(unnamed)'} at axis {axis} whose "
                        "size sparsec cannot guess. Fix: pass example_inputs={"
                        f"{value.name!r}: tensor}} to sparsec.compile (or --input on the CLI)"
                    )
            tensors.append(self._example(value.name, dtype, shape, generator))
        return tuple(tensors)

    def _example(self, name: str, dtype: torch.dtype, shape: list[int], generator: torch.Generator) -> torch.Tensor:
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(dtype)
        if dtype == torch.bool or "mask" in name.lower():
            return torch.ones(shape, dtype=dtype)
        rows = self.table_rows(name)
        if rows is None:
            return torch.zeros(shape, dtype=dtype)
        return torch.randint(0, rows, shape, generator=generator).to(dtype)

    def given_inputs(self, example_inputs: Any) -> tuple[torch.Tensor, ...]:
        """The user's example inputs in graph-input order (a tensor, a tuple, or a dict by name)."""
        names = [v.name for v in self.inputs]
        if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
            example_inputs = (example_inputs,)
        if isinstance(example_inputs, Mapping):
            unknown = sorted(set(example_inputs) - set(names) - {python_name(n) for n in names})
            missing = [n for n in names if n not in example_inputs and python_name(n) not in example_inputs]
            if unknown or missing:
                raise OnnxImportError(
                    f"example inputs {sorted(example_inputs)} do not match the model's inputs "
                    f"{names} (unknown {unknown}, missing {missing}). Fix: pass one tensor per input, by name"
                )
            values = [example_inputs[n] if n in example_inputs else example_inputs[python_name(n)] for n in names]
        else:
            values = list(example_inputs)
            if len(values) != len(names):
                raise OnnxImportError(f"the model takes {len(names)} inputs {names}; {len(values)} were given")
        return tuple(
            torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().contiguous().clone()
            for v in values
        )


def _dynamic_spec(
    program: OnnxProgram, inputs: tuple[torch.Tensor, ...], fixed: set[str], bounds: dict[str, dict[str, int]]
) -> tuple[tuple[dict[int, Dim] | None, ...], tuple[torch.Tensor, ...], dict[int, dict[int, str]]]:
    """Dims per input (shared by name), the inputs widened to size >= 2 along them, and the
    ONNX dim name of each dynamic (input, axis)."""
    dims: dict[str, Dim] = {}
    spec: list[dict[int, Dim] | None] = []
    names: dict[int, dict[int, str]] = {}
    widened = []
    for index, (value, tensor) in enumerate(zip(program.inputs, inputs, strict=True)):
        axes: dict[int, Dim] = {}
        for axis, dim in enumerate(program.dims(value)[: tensor.dim()]):
            if isinstance(dim, str) and dim not in fixed:
                key = python_name(dim)
                axes[axis] = dims.setdefault(dim, Dim(key, **bounds.get(key, {})))
                names.setdefault(index, {})[axis] = dim
                if tensor.shape[axis] == 1:
                    tensor = torch.cat([tensor, tensor], dim=axis)
        spec.append(axes or None)
        widened.append(tensor)
    return tuple(spec), tuple(widened), names


def _export(program: OnnxProgram, inputs: tuple[torch.Tensor, ...], dynamic: bool) -> tuple[Any, ...]:
    """torch.export with the file's dims: bounds it suggests are applied, dims it finds fixed
    by the model are made static, each at most once."""
    fixed: set[str] = set()
    bounds: dict[str, dict[str, int]] = {}
    module = program.module
    declared = {python_name(n): n for v in program.inputs for n in program.dims(v) if isinstance(n, str)}
    while True:
        if dynamic:
            spec, args, names = _dynamic_spec(program, inputs, fixed, bounds)
        else:
            spec, args, names = (None,) * len(inputs), inputs, {}
        try:
            with torch.no_grad():
                exported = torch.export.export(module, args, dynamic_shapes=spec, strict=False)
            return exported, spec, args, names, fixed
        except Exception as exc:  # torch.export raises many types; all mean "untraceable"
            imported = next((e for e in _chain(exc) if isinstance(e, OnnxImportError)), None)
            if imported is not None:
                raise imported from None
            text = str(exc)
            fixes = text.split("Suggested fixes", 1)[1] if "Suggested fixes" in text else ""
            newly_fixed = {declared[name] for name, _ in _FIXED.findall(fixes) if name in declared} - fixed
            new_bounds = {k: v for k, v in suggested_bounds(text).items() if k not in bounds}
            if not dynamic or not (newly_fixed or new_bounds):
                raise trace_error(module, exc) from exc
            fixed |= newly_fixed
            bounds.update(new_bounds)


def _chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 16:
        chain.append(cause)
    return chain


def trace_onnx(program: OnnxProgram, example_inputs: Any, *, dynamic: bool = True) -> Graph:
    """Trace `program` on the given inputs (or ones made from its types) into a Graph."""
    inputs = program.example_inputs() if example_inputs is None else program.given_inputs(example_inputs)
    exported, spec, args, names, fixed = _export(program, inputs, dynamic)
    gm = exported.module()
    drop_guards(gm)
    own_tensors(gm)
    symbols: dict[str, str] = {}
    specs = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for index, (value, node) in enumerate(zip(program.inputs, placeholders, strict=True)):
        val = node.meta["val"]
        shape: list[int | str] = []
        for axis, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt):
                label = names.get(index, {}).get(axis, str(size))
                symbols.setdefault(str(size), label)
                shape.append(symbols[str(size)])
            else:
                shape.append(int(size))
        specs.append(InputSpec(value.name, str(val.dtype).removeprefix("torch."), tuple(shape)))
    notes = [f"imported from ONNX ({program.module.display_name}, opset {program.module.opset})"]
    if fixed:
        notes.append(
            f"dims {sorted(fixed)} are fixed by the model (torch.export found them constant): "
            "they are static in the compiled model"
        )
    return Graph(
        module=gm,
        example_args=args,
        dynamic_shapes=spec if dynamic else None,
        symbol_names=symbols,
        input_specs=tuple(specs),
        output_names=tuple(program.module.output_names),
        output_dims=tuple(
            tuple(d if isinstance(d, str) else None for d in program.dims(value)) for value in program.model.graph.output
        ),
        notes=tuple(notes),
    )


def import_onnx(source: OnnxSource, example_inputs: Any = None, *, dynamic: bool = True) -> Graph:
    """Load, check and trace an ONNX model in one call."""
    return trace_onnx(OnnxProgram(source), example_inputs, dynamic=dynamic)
