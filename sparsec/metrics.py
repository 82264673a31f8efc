"""Model size and cost: parameters, multiply-accumulates, per-layer widths.

Rules:
- MACs are per sample: the `batch` dimension counts as 1, other dynamic dims (`seq`) take
  their size in the example inputs;
- counted ops: convolutions, linear layers, matrix products, attention; elementwise ops
  are not counted (they are not where the time goes, and every peer omits them).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from sparsec.ir import Graph
from sparsec.ir.opinfo import op_info

__all__ = ["LayerWidth", "count_macs", "layer_widths", "concrete_shape", "macs_by_node"]

aten = torch.ops.aten


@dataclass(frozen=True)
class LayerWidth:
    """A weight layer's input and output channels (features)."""

    layer: str
    op: str
    in_channels: int
    out_channels: int


def _substitutions(graph: Graph) -> dict[sympy.Symbol, int]:
    """Every size symbol in the graph: `batch` → 1, others → their size in the example."""
    subs: dict[sympy.Symbol, int] = {}
    for node in graph.nodes:
        for value in pytree.tree_leaves(node.meta.get("val")):
            if not isinstance(value, torch.Tensor):
                continue
            for size in value.shape:
                if not isinstance(size, torch.SymInt):
                    continue
                hints = size.node.shape_env.backed_var_to_val
                for sym in size.node.expr.free_symbols:
                    if sym not in subs:
                        is_batch = graph.symbol_names.get(str(sym)) == "batch"
                        # a data-dependent size (u0: a boolean mask's count) has no example
                        # value to read; it counts as 1, like the batch
                        subs[sym] = 1 if is_batch or sym not in hints else int(hints[sym])
    return subs


def concrete_shape(value: torch.Tensor, subs: dict[sympy.Symbol, int]) -> list[int]:
    """A fake tensor's shape with dynamic dims replaced by per-sample sizes."""
    return [
        int(s.node.expr.subs(subs)) if isinstance(s, torch.SymInt) else int(s) for s in value.shape
    ]


def _node_macs(node: fx.Node, subs: dict[sympy.Symbol, int]) -> int:
    """The node's MACs from its OpInfo (sparsec.ir.opinfo), per sample; 0 for other ops."""
    info = op_info(node.target)
    if info is None or info.macs is None or not isinstance(node.meta.get("val"), torch.Tensor):
        return 0
    return info.macs(node, lambda value: concrete_shape(value.meta["val"], subs))


def count_macs(graph: Graph) -> int:
    """Multiply-accumulates of one sample through the graph."""
    return sum(macs_by_node(graph).values())


def macs_by_node(graph: Graph) -> dict[str, int]:
    """Multiply-accumulates of one sample per counted node (cost models estimate from these)."""
    subs = _substitutions(graph)
    macs = {n.name: _node_macs(n, subs) for n in graph.nodes if n.op == "call_function"}
    return {name: value for name, value in macs.items() if value}


def layer_widths(graph: Graph) -> list[LayerWidth]:
    """Input/output channels of every conv and linear layer, in graph order."""
    widths = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        info = op_info(node.target)
        if info is None or info.layer is None:
            continue
        is_conv = info.layer == "conv"
        weight = node.args[1]
        shape = weight.meta["val"].shape
        groups = 1
        if is_conv:
            groups = int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))
        layer = str(weight.target).rsplit(".", 1)[0] if weight.op == "get_attr" else weight.name
        widths.append(
            LayerWidth(
                layer, "conv" if is_conv else "linear", int(shape[1]) * groups, int(shape[0])
            )
        )
    return widths
