"""Stable text form of a graph, for tests, IR dumps and `--print-ir`.

Rules:
- one line per node, in graph order: `%name: dtype[shape] = op(args)`;
- symbolic sizes print with the user's dimension names (`batch`, `seq`), not the
  tracer's numbered symbols, so the text does not change between runs;
- parameters print as `@qualified.name`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx

__all__ = ["format_graph", "format_value"]

_DTYPE_NAMES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
}


def _rename_symbols(text: str, symbol_names: Mapping[str, str]) -> str:
    if not symbol_names:
        return text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbol_names)) + r")\b")
    return pattern.sub(lambda m: symbol_names[m.group(1)], text)


def format_value(value: Any, symbol_names: Mapping[str, str]) -> str:
    """`f32[batch, 8, 16, 16]` for a tensor, a tuple of those for tuples."""
    if isinstance(value, torch.Tensor):
        dims = ", ".join(_rename_symbols(str(d), symbol_names) for d in value.shape)
        return f"{_DTYPE_NAMES.get(value.dtype, str(value.dtype))}[{dims}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(format_value(v, symbol_names) for v in value) + ")"
    if isinstance(value, torch.SymInt):
        return "sym(" + _rename_symbols(str(value), symbol_names) + ")"
    return type(value).__name__ if value is not None else "none"


def _format_arg(arg: Any, symbol_names: Mapping[str, str]) -> str:
    if isinstance(arg, fx.Node):
        return f"@{arg.target}" if arg.op == "get_attr" else f"%{arg.name}"
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(_format_arg(a, symbol_names) for a in arg)
        return f"[{inner}]"
    if isinstance(arg, torch.dtype):
        return _DTYPE_NAMES.get(arg, str(arg))
    return _rename_symbols(repr(arg), symbol_names)


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        packet, overload = str(target._schema.name).split("::")[-1], target._overloadname
        return packet if overload == "default" else f"{packet.split('.')[0]}.{overload}"
    return getattr(target, "__name__", str(target))


def format_graph(gm: fx.GraphModule, symbol_names: Mapping[str, str]) -> str:
    lines: list[str] = []
    params: dict[str, torch.Tensor] = dict(gm.named_parameters())
    params.update(dict(gm.named_buffers()))
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            tensor = params.get(str(node.target))
            shape = format_value(tensor, symbol_names) if tensor is not None else "?"
            lines.append(f"@{node.target}: {shape}")
        elif node.op == "placeholder":
            lines.append(f"%{node.name}: {format_value(node.meta.get('val'), symbol_names)} = input")
        elif node.op == "output":
            lines.append("return " + _format_arg(node.args[0], symbol_names))
        else:
            args = [_format_arg(a, symbol_names) for a in node.args]
            args += [f"{k}={_format_arg(v, symbol_names)}" for k, v in node.kwargs.items()]
            value = format_value(node.meta.get("val"), symbol_names)
            lines.append(f"%{node.name}: {value} = {_op_name(node)}({', '.join(args)})")
    return "\n".join(lines) + "\n"
