"""A graph module as picklable data, to run the same graph in another process (Ray tasks).

Rules:
- a traced module does not pickle: torch.export's unlifted module carries lambda hooks, its
  graph's namespace holds pybind objects, and ATen op overloads have no pickle support;
  re-tracing its generated code would rename nodes, which analyses address by name;
- `PortableModule.of(module)` keeps each node's op, name, target, args and kwargs (node
  references by name, ATen and custom ops by qualified name), the graph's codegen (its
  input and output pytree specs) and the tensors that `get_attr` nodes read;
- `.module()` rebuilds a plain `fx.GraphModule` with the same node names that computes the
  same values; node metadata (fake values, stack traces) does not travel.

Example:
    payload = PortableModule.of(graph.module)   # pickle or ray.put this
    module = payload.module()                   # in the worker: the same graph, same names
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

__all__ = ["PortableModule"]


@dataclass(frozen=True)
class _Ref:
    """A reference to an earlier node, by name."""

    name: str


@dataclass(frozen=True)
class _Op:
    """A torch operator by qualified name ("aten.linear.default"), resolved on arrival."""

    qualified: str

    def resolve(self) -> Any:
        value: Any = torch.ops
        for part in self.qualified.split("."):
            value = getattr(value, part)
        return value


def _target(target: Any) -> Any:
    if isinstance(target, torch._ops.OpOverload | torch._ops.HigherOrderOperator):
        name = (
            f"higher_order.{target.name()}"  # type: ignore[no-untyped-call]
            if isinstance(target, torch._ops.HigherOrderOperator)
            else str(target)
        )
        return _Op(name)
    return target


@dataclass(frozen=True)
class PortableModule:
    """Nodes, codegen and attribute tensors of a graph module (see module rules)."""

    nodes: tuple[tuple[str, str, Any, Any, Any], ...]
    codegen: Any
    attributes: dict[str, Any]

    @classmethod
    def of(cls, module: fx.GraphModule) -> PortableModule:
        nodes = tuple(
            (
                n.op,
                n.name,
                _target(n.target),
                fx.map_arg(n.args, lambda a: _Ref(a.name)),  # type: ignore[arg-type,return-value]
                fx.map_arg(n.kwargs, lambda a: _Ref(a.name)),  # type: ignore[arg-type,return-value]
            )
            for n in module.graph.nodes
        )
        attributes = {
            str(n.target): fx.graph_module._get_attr(module, str(n.target))
            for n in module.graph.nodes
            if n.op == "get_attr"
        }
        return cls(nodes, module.graph._codegen, attributes)

    def module(self) -> fx.GraphModule:
        graph = fx.Graph()
        made: dict[str, fx.Node] = {}

        def node(value: Any) -> Any:
            return fx.node.map_aggregate(
                value, lambda v: made[v.name] if isinstance(v, _Ref) else v
            )

        for op, name, target, args, kwargs in self.nodes:
            resolved = target.resolve() if isinstance(target, _Op) else target
            made[name] = graph.create_node(op, resolved, node(args), node(kwargs), name=name)
        graph._codegen = self.codegen
        return fx.GraphModule(self.attributes, graph)
