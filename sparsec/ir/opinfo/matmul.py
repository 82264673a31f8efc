"""Matrix products: matmul, mm, bmm, addmm, baddbmm (contraction and free axes)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, _args, _is_param, _layer, _link_matmul
from sparsec.ir.opinfo._registry import ShapeFn, macs, rule

aten = torch.ops.aten

@rule(aten.matmul.default, aten.mm.default, aten.bmm.default)
def _matmul(flow: ChannelFlow, node: fx.Node) -> None:
    _link_matmul(flow, _args(node)[0], _args(node)[1], node)

@rule(aten.addmm.default, aten.baddbmm.default)
def _addmm(flow: ChannelFlow, node: fx.Node) -> None:
    """`bias + m1 @ m2` (GPT-2's Conv1D: `addmm(bias, x, weight[in, out])`): the bias
    broadcasts onto the output and, as a parameter, produces its features."""
    bias, m1, m2 = _args(node)[0], _args(node)[1], _args(node)[2]
    _link_matmul(flow, m1, m2, node)
    if isinstance(bias, fx.Node):
        flow.broadcast(bias, node)
        if _is_param(bias) and flow.rank(bias) >= 1:
            flow.role(flow.slot(bias, -1), "producer", _layer(m2 if _is_param(m2) else bias))


def _lhs(node: fx.Node) -> fx.Node:
    lhs: fx.Node = _args(node)[1] if node.target is aten.addmm.default else _args(node)[0]
    return lhs


def _matmul_mac_axes(node: fx.Node) -> list[tuple[Any, int]]:
    lhs = _lhs(node)
    return [(node, node.meta["val"].dim() - 1), (lhs, lhs.meta["val"].dim() - 1)]


@macs(aten.matmul.default, aten.mm.default, aten.bmm.default, aten.addmm.default, axes=_matmul_mac_axes)
def _matmul_macs(node: fx.Node, shape: ShapeFn) -> int:
    """Each output element is a dot product over the contraction axis (the lhs's last)."""
    return math.prod(shape(node)) * shape(_lhs(node))[-1]
