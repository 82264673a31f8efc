"""Indexing ops: select, gather, index, topk, cumulative ops, unbind and stack.

`topk` is where index values start (a router choosing experts); `index`, `gather` and
`index_select` with such values as their index link the axis they read to the chosen one.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import (
    ChannelFlow,
    _arg,
    _args,
    _dim_arg,
    _freeze_axis,
    _link_except,
)
from sparsec.ir.opinfo._registry import index_values, rule

aten = torch.ops.aten

@rule(aten.cumsum.default, aten.cumprod.default)
def _cumulative(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    dim = _dim_arg(node, 1, "dim", 0, flow.rank(x))
    _link_except(flow, x, node, dim, f"%{node.name} accumulates along axis {dim}")

@rule(aten.diff.default)
def _diff(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    dim = _dim_arg(node, 2, "dim", -1, flow.rank(x))
    reason = f"%{node.name} differences along axis {dim}"
    _link_except(flow, x, node, dim, reason)
    for extra in (_arg(node, 3, "prepend"), _arg(node, 4, "append")):
        if isinstance(extra, fx.Node):
            _link_except(flow, extra, node, dim, reason)

@rule(aten.select.int)
def _select(flow: ChannelFlow, node: fx.Node) -> None:
    """x[..., i, ...] (a CLS token): the selected axis is frozen, the others link."""
    x = _args(node)[0]
    rank = flow.rank(x)
    dim = int(_args(node)[1]) % rank
    _freeze_axis(flow, x, dim, f"%{node.name} selects one index of axis {dim}")
    for axis in range(rank):
        if axis != dim:
            flow.identity(flow.slot(x, axis), flow.slot(node, axis if axis < dim else axis - 1))

def _link_addressed(flow: ChannelFlow, node: fx.Node, x: object, axis: int, index: object) -> bool:
    """If `index`'s values address a slot, link x's `axis` (the one they read) with it."""
    chosen = flow.addressed(index)
    read = flow.slot(x, axis)
    if chosen is None or read is None:
        return False
    flow.identity(read, chosen)
    flow.understood(node)
    return True


@rule(aten.index_select.default)
def _index_select(flow: ChannelFlow, node: fx.Node) -> None:
    """x.index_select(dim, index): other axes link; `dim` is read by index values, linked to
    the slot they address (topk's) or else frozen."""
    x, index = _args(node)[0], _args(node)[2]
    dim = int(_args(node)[1]) % flow.rank(x)
    reason = f"%{node.name} gathers axis {dim} by index values"
    for axis in range(flow.rank(x)):
        if axis != dim:
            flow.identity(flow.slot(x, axis), flow.slot(node, axis))
    _freeze_axis(flow, node, dim, reason)
    if not _link_addressed(flow, node, x, dim, index):
        _freeze_axis(flow, x, dim, reason)

@rule(aten.gather.default)
def _gather_op(flow: ChannelFlow, node: fx.Node) -> None:
    """out = index's shape; on axes other than `dim`, out[i] reads x[i] (linked when x and
    index agree in size); `dim` is addressed by values, so it is frozen."""
    x, index = _args(node)[0], _args(node)[2]
    rank = flow.rank(x)
    dim = int(_args(node)[1]) % rank
    flow.identity_all(index, node)
    reason = f"%{node.name} gathers axis {dim} by index values"
    if not _link_addressed(flow, node, x, dim, index):
        _freeze_axis(flow, x, dim, reason)
    _freeze_axis(flow, node, dim, reason)
    for axis in range(rank):
        if axis == dim:
            continue
        s, o = flow.slot(x, axis), flow.slot(node, axis)
        if s is not None and o is not None and flow.sizes[s] != flow.sizes[o]:
            flow.freeze_slot(s, f"%{node.name} reads part of axis {axis}")
        else:
            flow.identity(s, o)

@rule(aten.index.Tensor)
def _index(flow: ChannelFlow, node: fx.Node) -> None:
    """Advanced indexing x[None, idx, ...]: axes before and after the indexed ones link;
    indexed axes are addressed by values and frozen, and the index tensors broadcast onto
    the axes they produce. Non-adjacent index tensors (result axes moved first): frozen.
    One index tensor whose values address a slot (`experts.weight[topk_ids]`): the axis it
    reads links with that slot instead of freezing."""
    x, indices = _args(node)[0], list(_args(node)[1])
    rank, r_out = flow.rank(x), flow.rank(node)
    used = [i for i, t in enumerate(indices) if t is not None]
    reason = f"%{node.name} indexes by tensor values"
    if not used or used != list(range(used[0], used[-1] + 1)):
        flow.freeze(x, reason)
        flow.freeze(node, reason)
        for t in indices:
            flow.freeze(t, reason)
        return
    first, last = used[0], used[-1]
    n_mid = r_out - (rank - (last - first + 1))
    for axis in range(first):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis))
    for axis in range(last + 1, rank):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis - (last + 1) + first + n_mid))
    for axis in range(first, last + 1):
        if not (first == last and _link_addressed(flow, node, x, axis, indices[axis])):
            _freeze_axis(flow, x, axis, reason)
    for axis in range(first, first + n_mid):
        _freeze_axis(flow, node, axis, reason)
    for t in indices:
        if isinstance(t, fx.Node):
            flow.freeze(t, reason)

@rule(aten.unbind.int)
def _unbind(flow: ChannelFlow, node: fx.Node) -> None:
    """Each piece links with x on every axis but `dim`, which is frozen (it counts pieces)."""
    x = _args(node)[0]
    rank = flow.rank(x)
    dim = _dim_arg(node, 1, "dim", 0, rank)
    _freeze_axis(flow, x, dim, f"%{node.name} unbinds axis {dim} into separate tensors")
    for user in node.users:
        if user.target is not operator.getitem:
            flow.freeze(x, f"unbind %{node.name} used as a whole")
            continue
        for axis in range(rank):
            if axis != dim:
                flow.identity(flow.slot(x, axis), flow.slot(user, axis if axis < dim else axis - 1))

@rule(aten.stack.default)
def _stack(flow: ChannelFlow, node: fx.Node) -> None:
    """Every input links with the output on every axis but the new one, which is frozen."""
    tensors = _args(node)[0]
    rank = flow.rank(node)
    dim = _dim_arg(node, 1, "dim", 0, rank)
    _freeze_axis(flow, node, dim, f"%{node.name} stacks tensors along axis {dim}")
    for t in tensors:
        for axis in range(rank - 1):
            flow.identity(flow.slot(t, axis), flow.slot(node, axis if axis < dim else axis + 1))

@rule(aten.topk.default)
def _topk(flow: ChannelFlow, node: fx.Node) -> None:
    """topk(x, k, dim): values and indices link with x on every other axis; their `dim` axis
    holds the k choices (frozen). The indices' values address x's `dim`, which is selected
    over: it may lose elements (a router's experts) as long as k stay and every reader of
    the indices links what they index (see `ChannelFlow.address`)."""
    x, k = _args(node)[0], int(_args(node)[1])
    rank = flow.rank(x)
    dim = _dim_arg(node, 2, "dim", -1, rank)
    chosen = flow.slot(x, dim)
    for user in node.users:
        if user.target is not operator.getitem:
            flow.freeze(x, f"topk %{node.name} used as a whole")
            continue
        for axis in range(rank):
            if axis == dim:
                _freeze_axis(flow, user, axis, f"%{node.name} keeps the top {k} of axis {dim}")
            else:
                flow.identity(flow.slot(x, axis), flow.slot(user, axis))
        if _args(user)[1] == 1 and chosen is not None:
            flow.address(user, chosen, node.name)
    if chosen is not None:
        flow.select(chosen, node, k)


index_values("kept", aten.select.int)
