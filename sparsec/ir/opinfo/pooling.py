"""Pooling, reductions and resampling: the channel axis passes, reduced or resampled axes do not."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, _args, _kwargs
from sparsec.ir.opinfo._registry import rule

aten = torch.ops.aten

_POOLS = [
    aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
    aten.adaptive_avg_pool3d.default, aten.avg_pool1d.default, aten.avg_pool2d.default,
    aten.avg_pool3d.default, aten.max_pool1d.default, aten.max_pool2d.default,
    aten.max_pool3d.default, aten._adaptive_avg_pool2d.default,
]

@rule(*_POOLS)
def _pool(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    for axis in range(min(2, flow.rank(node))):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis))

_REDUCTIONS = [aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default]

@rule(*_REDUCTIONS)
def _reduce(flow: ChannelFlow, node: fx.Node) -> None:
    _link_kept_axes(flow, node, dim_arg=1)

@rule(aten.linalg_vector_norm.default)
def _vector_norm(flow: ChannelFlow, node: fx.Node) -> None:
    """A p-norm over `dim` (F.normalize, GRN): the kept axes pass, as through a sum."""
    _link_kept_axes(flow, node, dim_arg=2)

def _link_kept_axes(flow: ChannelFlow, node: fx.Node, dim_arg: int) -> None:
    """Link the axes a reduction keeps (`dim` at `dim_arg`, `keepdim` after it); reduced
    axes stay free."""
    x = _args(node)[0]
    rank = flow.rank(x)
    dims = _args(node)[dim_arg] if len(_args(node)) > dim_arg else _kwargs(node).get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
    reduced = {d % rank for d in dims}
    keep_arg = dim_arg + 1
    keepdim = (
        bool(_args(node)[keep_arg]) if len(_args(node)) > keep_arg else bool(_kwargs(node).get("keepdim", False))
    )
    out_axis = 0
    for axis in range(rank):
        if axis in reduced:
            out_axis += 1 if keepdim else 0
            continue
        flow.identity(flow.slot(x, axis), flow.slot(node, out_axis))
        out_axis += 1

_UPSAMPLES = [
    aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec,
    aten.upsample_bilinear2d.vec, aten.upsample_bicubic2d.vec, aten.upsample_linear1d.vec,
    aten.upsample_trilinear3d.vec, aten.upsample_nearest1d.default,
    aten.upsample_nearest2d.default, aten.upsample_nearest3d.default,
    aten.upsample_bilinear2d.default, aten.upsample_bicubic2d.default,
]

for _op in _UPSAMPLES:
    rule(_op)(_pool)

@rule(aten.im2col.default)
def _im2col(flow: ChannelFlow, node: fx.Node) -> None:
    """nn.Unfold, [B, C, H, W] -> [B, C·kh·kw, L]: row c·kh·kw + j is channel c's kernel
    position j, so the rows follow their channel; the positions L are free."""
    x = _args(node)[0]
    if flow.rank(x) != 4:  # unbatched [C, H, W]
        flow.freeze(x, f"im2col %{node.name} of an unbatched input")
        flow.freeze(node, f"im2col %{node.name} of an unbatched input")
        return
    flow.identity(flow.slot(x, 0), flow.slot(node, 0))
    rows = flow.slot(node, 1)
    per_channel = math.prod(int(k) for k in _args(node)[1])
    size = flow.sizes[rows] if rows is not None else 0
    flow.gather(rows, flow.slot(x, 1), np.arange(size) // per_channel)
