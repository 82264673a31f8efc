"""Ops through which no channel flows: runtime checks, tensor creators, size reads."""

from __future__ import annotations

import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, Resize, Resized, _args
from sparsec.ir.opinfo._registry import index_values, resizer, rule

aten = torch.ops.aten

@rule(aten.sym_size.int)
def _no_channels(flow: ChannelFlow, node: fx.Node) -> None:
    """Reads a dynamic size only; no channel flows through."""

@rule(
    aten._assert_tensor_metadata.default, aten._assert_scalar.default,
    aten._assert_async.msg, aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
)
def _check_only(flow: ChannelFlow, node: fx.Node) -> None:
    """Runtime checks: no output, no channels; the resizer drops stale size checks."""

index_values("unread", aten.sym_size.int, aten._assert_tensor_metadata.default)

@resizer(aten._assert_tensor_metadata.default)
def _resize_assert_metadata(node: fx.Node, r: Resize) -> Resized | None:
    a = _args(node)[0]
    if not isinstance(a, fx.Node) or not isinstance(a.meta.get("val"), torch.Tensor):
        return None
    if not any(r.new_size(a, axis) is not None for axis in range(a.meta["val"].dim())):
        return None
    args = list(node.args)
    kwargs = dict(node.kwargs)
    for index, name in ((1, "size"), (2, "stride")):
        if len(args) > index:
            args[index] = None
        kwargs.pop(name, None)
    return Resized(tuple(args), kwargs)

_CREATORS = [
    aten.arange.default, aten.arange.start, aten.arange.start_step, aten.zeros.default,
    aten.ones.default, aten.full.default, aten.empty.memory_format, aten.scalar_tensor.default,
    aten.new_zeros.default, aten.new_ones.default, aten.new_full.default,
    aten.new_empty.default, aten.rand.default, aten.randn.default, aten.tril.default,
    aten.triu.default,
]

@rule(*_CREATORS)
def _creator(flow: ChannelFlow, node: fx.Node) -> None:
    """A tensor made from sizes (or a constant pattern): no channel flows in, and its
    static axes keep their size, so anything they meet is frozen."""
    if node.target in (aten.tril.default, aten.triu.default):
        x = _args(node)[0]
        flow.freeze(x, f"%{node.name} ({node.target}) keeps a fixed triangle")
    flow.freeze(node, f"%{node.name} is created with a fixed shape by {node.target}")
