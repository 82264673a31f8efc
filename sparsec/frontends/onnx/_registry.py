"""The ONNX op table: one handler per (domain, op type), registered once.

Rules:
- a handler takes the node's `Call` (attributes, opset, the module's tensors) and its input
  values (None for an omitted optional input) and returns one value or a tuple of them;
- handlers are written with torch functions, so tracing the interpreter yields the same ATen
  ops a torch model would (`aten.linear`, `aten.conv2d`, `aten.layer_norm`, ...);
- registering a (domain, op type) twice is an error at import time;
- the "sparsec" domain holds the ops the importer's preparation writes (fused linears,
  attention cores); they never appear in a user's file.

Example:
    @op("Relu")
    def _relu(call: Call, x: Value) -> Value: ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsec.frontends.onnx._values import Value

__all__ = ["Call", "Handler", "NodeCall", "handler_for", "op", "registered_ops"]

ONNX_DOMAIN = ""
MICROSOFT_DOMAIN = "com.microsoft"
SPARSEC_DOMAIN = "sparsec"


@dataclass(frozen=True)
class NodeCall:
    """One node to interpret: an ONNX node as read, or one the preparation wrote."""

    name: str
    domain: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    scope: str = ""  # the module path the exporter recorded (`bert.encoder.layer.0.query`)

    @property
    def label(self) -> str:
        domain = f"{self.domain}::" if self.domain else ""
        return f"{domain}{self.op_type} node {self.name!r}"


@dataclass(frozen=True)
class Call:
    """What a handler may read besides its inputs."""

    node: NodeCall
    opset: int
    tensor: Callable[[str], torch.Tensor]  # a registered parameter or buffer by ONNX name

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)


Handler = Callable[..., Value | Sequence[Value | None]]
_TABLE: dict[tuple[str, str], Handler] = {}


def _domain(domain: str) -> str:
    return ONNX_DOMAIN if domain in ("", "ai.onnx") else domain


def op(*op_types: str, domain: str = ONNX_DOMAIN) -> Callable[[Handler], Handler]:
    """Register `fn` as the handler of each op type in `domain`."""

    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            key = (_domain(domain), op_type)
            if key in _TABLE:
                raise RuntimeError(f"ONNX op {key} is registered twice")
            _TABLE[key] = fn
        return fn

    return register


def handler_for(domain: str, op_type: str) -> Handler | None:
    return _TABLE.get((_domain(domain), op_type))


def registered_ops() -> list[tuple[str, str]]:
    """Every (domain, op type) the importer runs, for documentation and coverage tests."""
    return sorted(_TABLE)
