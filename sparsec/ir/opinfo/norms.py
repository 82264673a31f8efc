"""Normalizations: batch, layer and group norm tie their parameters to the channel axis."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, Resize, Resized, _arg, _args, _freeze_axis, _layer
from sparsec.ir.opinfo._registry import resizer, rule

aten = torch.ops.aten

@rule(aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
def _batch_norm(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    out = node
    if isinstance(node.meta.get("val"), (tuple, list)):
        users = [u for u in node.users if u.target is operator.getitem and _args(u)[1] == 0]
        extra = [u for u in node.users if u not in users]
        for u in extra:
            flow.freeze(u, "batch-norm statistics outputs are not tracked")
        if not users:
            return
        out = users[0]
    flow.identity_all(x, out)
    channel = flow.slot(out, 1)
    for param in _args(node)[1:5]:
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), channel)
            flow.role(flow.slot(param, 0), "norm", _layer(param))

@rule(aten.layer_norm.default)
def _layer_norm(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    flow.identity_all(x, node)
    normalized = list(_args(node)[1])
    if len(normalized) != 1:
        for axis in range(flow.rank(node) - len(normalized), flow.rank(node)):
            s = flow.slot(node, axis)
            if s is not None:
                flow.freeze_slot(s, "layer_norm over several axes")
    for param in _args(node)[2:4]:
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), flow.slot(node, -1))
            flow.role(flow.slot(param, 0), "norm", _layer(param))

@resizer(aten.layer_norm.default)
def _resize_layer_norm(node: fx.Node, r: Resize) -> Resized | None:
    new = r.new_size(node, -1)
    if new is None or list(_args(node)[1]) == [new]:
        return None
    args = list(node.args)
    args[1] = [new]
    return Resized(tuple(args), dict(node.kwargs))

@rule(aten.group_norm.default)
def _group_norm(flow: ChannelFlow, node: fx.Node) -> None:
    """GroupNorm over channel axis 1.

    - one group (a channels-first LayerNorm): channels prune one by one, and the statistics
      are taken over the channels that remain, as for layer_norm;
    - several groups: a unit is a whole group (every channel of a group is tied to the
      group's first channel), so the remaining groups keep their size and statistics and
      the resizer lowers `num_groups`.
    """
    x, groups = _args(node)[0], int(_args(node)[1])
    flow.identity_all(x, node)
    channel = flow.slot(node, 1)
    for param in (_arg(node, 2, "weight"), _arg(node, 3, "bias")):
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), channel)
            flow.role(flow.slot(param, 0), "norm", _layer(param))
    if channel is None or groups <= 1:
        return
    per_group = flow.sizes[channel] // groups
    if per_group > 1:
        index = np.arange(flow.sizes[channel])
        flow.gather(channel, channel, index - index % per_group)

@resizer(aten.group_norm.default)
def _resize_group_norm(node: fx.Node, r: Resize) -> Resized | None:
    groups = int(_args(node)[1])
    new_c = r.new_size(node, 1)
    if new_c is None or groups <= 1:
        return None
    per_group = node.meta["val"].shape[1] // groups
    args = list(node.args)
    args[1] = new_c // per_group
    return Resized(tuple(args), dict(node.kwargs))

@rule(aten.native_layer_norm.default)
def _native_layer_norm(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    outs = [u for u in node.users if u.target is operator.getitem and _args(u)[1] == 0]
    for u in node.users:
        if u not in outs:
            flow.freeze(u, "layer-norm statistics outputs are not tracked")
    normalized = list(_args(node)[1])
    for out in outs:
        flow.identity_all(x, out)
    if len(normalized) != 1:
        for axis in range(flow.rank(x) - len(normalized), flow.rank(x)):
            _freeze_axis(flow, x, axis, "layer_norm over several axes")
        return
    for param in _args(node)[2:4]:
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), flow.slot(x, -1))
            flow.role(flow.slot(param, 0), "norm", _layer(param))

@resizer(aten.native_layer_norm.default)
def _resize_native_layer_norm(node: fx.Node, r: Resize) -> Resized | None:
    new = r.new_size(_args(node)[0], -1)
    if new is None or len(_args(node)[1]) != 1 or list(_args(node)[1]) == [new]:
        return None
    args = list(node.args)
    args[1] = [new]
    return Resized(tuple(args), dict(node.kwargs))
