"""Weighted layers: convolutions, linear and embedding (channel-flow rules, resizers, MACs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import (
    ChannelFlow,
    Resize,
    Resized,
    _args,
    _kwargs,
    _layer,
    _param_part,
)
from sparsec.ir.opinfo._registry import ShapeFn, layer, macs, resizer, rule

aten = torch.ops.aten

def _conv_groups(node: fx.Node) -> int:
    if node.target is aten.convolution.default:
        return int(_args(node)[8])
    return int(_args(node)[6]) if len(_args(node)) > 6 else int(_kwargs(node).get("groups", 1))

# `.padding`: the same op with padding given as "same" or "valid"; the arguments keep their places
_CONVS = [
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,
]

@rule(*_CONVS)
def _conv(flow: ChannelFlow, node: fx.Node) -> None:
    x, weight = _args(node)[0], _args(node)[1]
    bias = _args(node)[2] if len(_args(node)) > 2 else None
    groups = _conv_groups(node)
    layer = _layer(weight)
    out_c, w_out, w_in = flow.slot(node, 1), flow.slot(weight, 0), flow.slot(weight, 1)
    x_c = flow.slot(x, 1)
    flow.identity(w_out, out_c)
    flow.role(w_out, "producer", layer)
    if isinstance(bias, fx.Node):
        flow.identity(flow.slot(bias, 0), out_c)
        flow.role(flow.slot(bias, 0), "producer", layer)
    flow.identity(flow.slot(x, 0), flow.slot(node, 0))
    if out_c is None or x_c is None or w_in is None:
        return
    n_out, n_in, per_group_in = flow.sizes[out_c], flow.sizes[x_c], flow.sizes[w_in]
    if groups == 1:
        flow.identity(x_c, w_in)
        flow.role(w_in, "consumer", layer)
    elif per_group_in == 1 and groups == n_in:
        # depthwise (with channel multiplier m): output o reads input o // m
        flow.gather(out_c, x_c, np.arange(n_out) // (n_out // n_in))
        flow.freeze_slot(w_in, "depthwise weight has one input per group")
    else:
        # grouped: remove the same in/out positions from every group so groups stay equal
        per_group_out = n_out // groups
        flow.gather(x_c, w_in, np.arange(n_in) % per_group_in)
        flow.gather(out_c, out_c, np.arange(n_out) % per_group_out)
        flow.role(w_in, "consumer", layer)

@resizer(*_CONVS)
def _resize_conv(node: fx.Node, r: Resize) -> Resized | None:
    weight = _args(node)[1]
    groups = _conv_groups(node)
    new_in = r.new_size(_args(node)[0], 1)
    if groups == 1 or new_in is None or weight.meta["val"].shape[1] != 1:
        return None
    if len(_args(node)) > 6:
        return Resized((*_args(node)[:6], new_in, *_args(node)[7:]), dict(node.kwargs))
    return Resized(tuple(node.args), {**node.kwargs, "groups": new_in})

@rule(aten.linear.default)
def _linear(flow: ChannelFlow, node: fx.Node) -> None:
    """A weight that is a row block of a parameter (`_param_part`) gives the parameter its roles."""
    x, weight = _args(node)[0], _args(node)[1]
    bias = _args(node)[2] if len(_args(node)) > 2 else None
    owner = _param_part(weight)
    layer = _layer(owner)
    out_f, w_out = flow.slot(node, -1), flow.slot(weight, 0)
    flow.identity(w_out, out_f)
    flow.role(flow.slot(owner, 0), "producer", layer)
    if isinstance(bias, fx.Node):
        flow.identity(flow.slot(bias, 0), out_f)
        flow.role(flow.slot(_param_part(bias), 0), "producer", layer)
    w_in = flow.slot(weight, 1)
    flow.identity(flow.slot(x, -1), w_in)
    flow.role(flow.slot(owner, 1), "consumer", layer)
    for axis in range(flow.rank(node) - 1):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis))

@rule(aten.embedding.default)
def _embedding(flow: ChannelFlow, node: fx.Node) -> None:
    weight, indices = _args(node)[0], _args(node)[1]
    w_dim = flow.slot(weight, 1)
    flow.identity(w_dim, flow.slot(node, -1))
    flow.role(w_dim, "producer", _layer(weight))
    rows = flow.slot(weight, 0)
    if rows is not None:
        flow.freeze_slot(rows, "embedding rows are looked up by token id")
    for axis in range(flow.rank(indices)):
        flow.identity(flow.slot(indices, axis), flow.slot(node, axis))


# ---------------------------------------------------------------- layer kinds and MACs
for _target, _spatial in (
    (aten.conv1d.default, 1), (aten.conv1d.padding, 1), (aten.conv2d.default, 2),
    (aten.conv2d.padding, 2), (aten.conv3d.default, 3), (aten.conv3d.padding, 3),
):
    layer(_target, "conv", weight_arg=1, spatial_dims=_spatial)
layer(aten.linear.default, "linear", weight_arg=1)


def _conv_mac_axes(node: fx.Node) -> list[tuple[Any, int]]:
    return [(node, 1), (_args(node)[1], 1)]


@macs(
    *_CONVS, aten.convolution.default,
    axes=_conv_mac_axes,
)
def _conv_macs(node: fx.Node, shape: ShapeFn) -> int:
    """Each output element reads a kernel of in/groups channels: out · (in/groups · kernel)."""
    kernel = [int(size) for size in _args(node)[1].meta["val"].shape[1:]]
    return math.prod(shape(node)) * math.prod(kernel)


def _linear_mac_axes(node: fx.Node) -> list[tuple[Any, int]]:
    return [(node, node.meta["val"].dim() - 1), (_args(node)[1], 1)]


@macs(aten.linear.default, axes=_linear_mac_axes)
def _linear_macs(node: fx.Node, shape: ShapeFn) -> int:
    return math.prod(shape(node)) * int(_args(node)[1].meta["val"].shape[1])
