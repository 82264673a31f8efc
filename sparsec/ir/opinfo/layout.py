"""Layout ops: views, reshapes, permutes, concatenation, splits, slices, expand, repeat, pad."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import sympy
import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import (
    ChannelFlow,
    Resize,
    Resized,
    _arg,
    _args,
    _freeze_axis,
    _kwargs,
    _static_size,
)
from sparsec.ir.opinfo._registry import has_rule, index_values, resizer, rule

aten = torch.ops.aten

@rule(aten.flatten.using_ints)
def _flatten(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    start = (_args(node)[1] if len(_args(node)) > 1 else 0) % max(rank, 1)
    end = (_args(node)[2] if len(_args(node)) > 2 else -1) % max(rank, 1)
    _link_reshape(flow, x, node, _blocks_flatten(rank, start, end))

@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unflatten.int)
def _view(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    blocks = factor_reshape(_sizes(x), _sizes(node))
    if blocks is None:
        flow.freeze(x, f"reshape at %{node.name} could not be factored")
        flow.freeze(node, f"reshape at %{node.name} could not be factored")
        return
    _link_reshape(flow, x, node, blocks)

def _sizes(node: fx.Node) -> list[sympy.Expr]:
    val = node.meta["val"]
    return [s.node.expr if isinstance(s, torch.SymInt) else sympy.Integer(int(s)) for s in val.shape]

def _blocks_flatten(rank: int, start: int, end: int) -> list[tuple[list[int], list[int]]]:
    blocks = [([a], [a]) for a in range(start)]
    blocks.append((list(range(start, end + 1)), [start]))
    blocks += [([a], [a - (end - start)]) for a in range(end + 1, rank)]
    return blocks

def factor_reshape(
    src: Sequence[sympy.Expr], dst: Sequence[sympy.Expr]
) -> list[tuple[list[int], list[int]]] | None:
    """Group the axes of a reshape into (source axes, destination axes) blocks of equal size.

    `[b, s, 768] -> [b, s, 12, 64]` gives `[([0],[0]), ([1],[1]), ([2],[2,3])]`. Size-1 axes
    join the neighbouring block. None if the sizes cannot be matched.
    """
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i == len(src) or j == len(dst):
            # only size-1 axes may remain
            rest_src, rest_dst = list(range(i, len(src))), list(range(j, len(dst)))
            if any(src[a] != 1 for a in rest_src) or any(dst[a] != 1 for a in rest_dst):
                return None
            if blocks:
                blocks[-1][0].extend(rest_src)
                blocks[-1][1].extend(rest_dst)
            return blocks
        si, dj = [i], [j]
        p_src, p_dst = src[i], dst[j]
        i, j = i + 1, j + 1
        while sympy.simplify(p_src - p_dst) != 0:
            if _smaller(p_src, p_dst):
                if i == len(src):
                    return None
                p_src = p_src * src[i]
                si.append(i)
                i += 1
            else:
                if j == len(dst):
                    return None
                p_dst = p_dst * dst[j]
                dj.append(j)
                j += 1
        blocks.append((si, dj))
    return blocks

def _smaller(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Whether product `a` must take in more axes to reach `b`."""
    ratio = sympy.simplify(b / a)
    if ratio.is_Rational:
        return bool(ratio > 1)
    return bool(b.free_symbols - a.free_symbols)

def _link_reshape(
    flow: ChannelFlow, x: fx.Node, out: fx.Node, blocks: list[tuple[list[int], list[int]]]
) -> None:
    """Link each block: 1→1 identity; merge or split through the outermost non-unit axis.

    In a merge `[C, H, W] -> [C*H*W]` the output element j belongs to channel j // (H*W);
    inner axes are frozen, since removing one of their elements would need a product set.
    In a split `[768] -> [12, 64]` the outer axis (heads) is linked; the inner one is frozen.
    """
    for src_axes, dst_axes in blocks:
        src_real = [a for a in src_axes if _static_size(flow, x, a) != 1]
        dst_real = [a for a in dst_axes if _static_size(flow, out, a) != 1]
        if len(src_real) <= 1 and len(dst_real) <= 1:
            if src_real and dst_real:
                flow.identity(flow.slot(x, src_real[0]), flow.slot(out, dst_real[0]))
            continue
        if len(src_real) > 1 and len(dst_real) > 1:
            for a in src_real:
                _freeze_axis(flow, x, a, f"reshape %{out.name} mixes several axes")
            for a in dst_real:
                _freeze_axis(flow, out, a, f"reshape %{out.name} mixes several axes")
            continue
        merged_node, merged_axis, parts_node, parts = (
            (out, dst_real[0], x, src_real) if len(src_real) > 1 else (x, src_real[0], out, dst_real)
        )
        outer = flow.slot(parts_node, parts[0])
        merged = flow.slot(merged_node, merged_axis)
        inner: int | None = 1
        for a in parts[1:]:
            size = _static_size(flow, parts_node, a)
            _freeze_axis(flow, parts_node, a, f"inner axis of reshape %{out.name}")
            inner = inner * size if size is not None and inner is not None else None
        if merged is None or outer is None or inner is None:
            _freeze_axis(flow, merged_node, merged_axis, f"dynamic reshape %{out.name}")
            _freeze_axis(flow, parts_node, parts[0], f"dynamic reshape %{out.name}")
            continue
        flow.gather(merged, outer, np.arange(flow.sizes[merged]) // inner)

@resizer(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _resize_view(node: fx.Node, r: Resize) -> Resized | None:
    shape = list(_args(node)[1])
    changed = False
    for axis, size in enumerate(shape):
        if isinstance(size, int) and size != -1:
            new = r.new_size(node, axis)
            if new is not None and new != size:
                shape[axis] = new
                changed = True
    if not changed:
        return None
    return Resized((_args(node)[0], shape, *_args(node)[2:]), dict(node.kwargs))

@resizer(aten.unflatten.int)
def _resize_unflatten(node: fx.Node, r: Resize) -> Resized | None:
    x, dim, sizes = _args(node)[:3]
    start = dim % max(len(x.meta["val"].shape), 1)
    new_sizes = list(sizes)
    for i, size in enumerate(sizes):
        if isinstance(size, int) and size != -1:
            new = r.new_size(node, start + i)
            if new is not None and new != size:
                new_sizes[i] = new
    if new_sizes == list(sizes):
        return None
    return Resized((x, dim, new_sizes, *_args(node)[3:]), dict(node.kwargs))

@rule(aten.permute.default)
def _permute(flow: ChannelFlow, node: fx.Node) -> None:
    x, dims = _args(node)[0], _args(node)[1]
    rank = flow.rank(x)
    for out_axis, in_axis in enumerate(dims):
        flow.identity(flow.slot(x, in_axis % rank), flow.slot(node, out_axis))

@rule(aten.transpose.int)
def _transpose(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    d0, d1 = _args(node)[1] % rank, _args(node)[2] % rank
    order = list(range(rank))
    order[d0], order[d1] = order[d1], order[d0]
    for out_axis, in_axis in enumerate(order):
        flow.identity(flow.slot(x, in_axis), flow.slot(node, out_axis))

@rule(aten.numpy_T.default)
def _numpy_t(flow: ChannelFlow, node: fx.Node) -> None:
    """`Tensor.T`: every axis reversed."""
    x = _args(node)[0]
    rank = flow.rank(x)
    for axis in range(rank):
        flow.identity(flow.slot(x, axis), flow.slot(node, rank - 1 - axis))

@rule(aten.t.default)
def _t(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    for out_axis in range(rank):
        flow.identity(flow.slot(x, rank - 1 - out_axis), flow.slot(node, out_axis))

@rule(aten.unsqueeze.default)
def _unsqueeze(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    at = _args(node)[1] % flow.rank(node)
    for axis in range(flow.rank(x)):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis if axis < at else axis + 1))

@rule(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    kept = [a for a in range(flow.rank(x)) if _static_size(flow, x, a) != 1 or not _is_squeezed(node, a)]
    for out_axis, in_axis in enumerate(kept):
        flow.identity(flow.slot(x, in_axis), flow.slot(node, out_axis))

def _is_squeezed(node: fx.Node, axis: int) -> bool:
    rank = _args(node)[0].meta["val"].dim()
    if node.target is aten.squeeze.default:
        return True
    dims = _args(node)[1] if isinstance(_args(node)[1], (list, tuple)) else [_args(node)[1]]
    return axis in {d % rank for d in dims}

@rule(aten.cat.default)
def _cat(flow: ChannelFlow, node: fx.Node) -> None:
    tensors = _args(node)[0]
    rank = flow.rank(node)
    dim = (_args(node)[1] if len(_args(node)) > 1 else _kwargs(node).get("dim", 0)) % rank
    offset = 0
    out = flow.slot(node, dim)
    for t in tensors:
        for axis in range(rank):
            if axis != dim:
                flow.identity(flow.slot(t, axis), flow.slot(node, axis))
        part = flow.slot(t, dim)
        if part is None or out is None:
            _freeze_axis(flow, t, dim, f"dynamic concatenation %{node.name}")
            continue
        n = flow.sizes[part]
        flow.gather(part, out, np.arange(n) + offset)
        offset += n

_SPLITS = [aten.split_with_sizes.default, aten.split.Tensor, aten.chunk.default]

def _split_dim(node: fx.Node) -> int:
    rank: int = _args(node)[0].meta["val"].dim()
    dim: int = _args(node)[2] if len(_args(node)) > 2 else _kwargs(node).get("dim", 0)
    return dim % rank

@rule(*_SPLITS)
def _split(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    dim = _split_dim(node)
    src = flow.slot(x, dim)
    offsets = np.cumsum([0] + [t.shape[dim] for t in node.meta["val"]])
    for user in node.users:
        if user.target is not operator.getitem:
            flow.freeze(x, f"split %{node.name} used as a whole")
            continue
        k = int(_args(user)[1])
        for axis in range(rank):
            if axis != dim:
                flow.identity(flow.slot(x, axis), flow.slot(user, axis))
        part = flow.slot(user, dim)
        if part is None or src is None:
            _freeze_axis(flow, x, dim, f"dynamic split %{node.name}")
            continue
        flow.gather(part, src, np.arange(flow.sizes[part]) + int(offsets[k]))

@resizer(*_SPLITS)
def _resize_split(node: fx.Node, r: Resize) -> Resized | None:
    x = _args(node)[0]
    dim = _split_dim(node)
    kept = r.kept(x, dim)
    if kept is None:
        return None
    old = [int(t.shape[dim]) for t in node.meta["val"]]
    bounds = np.cumsum([0] + old)
    new = [int(((kept >= lo) & (kept < hi)).sum()) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    if new == old:
        return None
    return Resized((x, new, dim), {}, target=aten.split_with_sizes.default)

@rule(aten.slice.Tensor)
def _slice(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    dim = (_args(node)[1] if len(_args(node)) > 1 else 0) % rank
    for axis in range(rank):
        if axis != dim:
            flow.identity(flow.slot(x, axis), flow.slot(node, axis))
    src, out = flow.slot(x, dim), flow.slot(node, dim)
    if src is None or out is None:
        return
    start, _, step = _slice_bounds(node, flow.sizes[src])
    if step != 1:
        flow.freeze_slot(src, f"strided slice %{node.name}")
        flow.freeze_slot(out, f"strided slice %{node.name}")
        return
    flow.gather(out, src, np.arange(flow.sizes[out]) + start)

def _slice_bounds(node: fx.Node, size: int) -> tuple[int, int, int]:
    start = _args(node)[2] if len(_args(node)) > 2 and _args(node)[2] is not None else 0
    end = _args(node)[3] if len(_args(node)) > 3 and _args(node)[3] is not None else size
    step = _args(node)[4] if len(_args(node)) > 4 else 1
    start = max(0, start + size if start < 0 else min(start, size))
    end = max(0, end + size if end < 0 else min(end, size))
    return start, end, step

@resizer(aten.slice.Tensor)
def _resize_slice(node: fx.Node, r: Resize) -> Resized | None:
    x = _args(node)[0]
    rank = x.meta["val"].dim()
    dim = (_args(node)[1] if len(_args(node)) > 1 else 0) % rank
    size = x.meta["val"].shape[dim]
    kept = r.kept(x, dim)
    if kept is None or not isinstance(size, int):
        return None
    start, end, _ = _slice_bounds(node, size)
    new_start = int((kept < start).sum())
    new_end = new_start + int(((kept >= start) & (kept < end)).sum())
    if (new_start, new_end) == (start, end):
        return None
    args = list(node.args) + [None] * (4 - len(_args(node)))
    args[1], args[2], args[3] = dim, new_start, new_end
    return Resized(tuple(args), dict(node.kwargs))

@rule(operator.getitem)
def _getitem(flow: ChannelFlow, node: fx.Node) -> None:
    producer = _args(node)[0]
    if not (isinstance(producer, fx.Node) and has_rule(producer)):
        flow.freeze(node, f"getitem of %{getattr(producer, 'name', producer)}, which has no rule")

@rule(aten.roll.default)
def _roll(flow: ChannelFlow, node: fx.Node) -> None:
    """Rolled axes are frozen; every other axis links, so the channels around a roll of the
    spatial axes (Swin's shifted windows) stay prunable. Without `dims` the roll runs over
    the flattened tensor: everything is frozen."""
    x = _args(node)[0]
    rank = flow.rank(x)
    dims = _arg(node, 2, "dims", [])
    for axis in range(rank):
        if not dims or axis in {d % rank for d in dims}:
            reason = f"%{node.name} rolls axis {axis}" if dims else f"%{node.name} rolls the flattened tensor"
            _freeze_axis(flow, x, axis, reason)
            _freeze_axis(flow, node, axis, reason)
        else:
            flow.identity(flow.slot(x, axis), flow.slot(node, axis))


@rule(aten.expand.default)
def _expand(flow: ChannelFlow, node: fx.Node) -> None:
    """Axes kept from the input link with the output; broadcast (size-1 -> n) and new
    leading axes are free: the resizer rewrites their sizes when they shrink."""
    x = _args(node)[0]
    r_in, r_out = flow.rank(x), flow.rank(node)
    for axis in range(r_in):
        s = flow.slot(x, axis)
        if s is not None and flow.sizes[s] == 1 and _static_size(flow, node, axis + r_out - r_in) != 1:
            continue
        flow.identity(s, flow.slot(node, axis + r_out - r_in))

@rule(aten.expand_as.default)
def _expand_as(flow: ChannelFlow, node: fx.Node) -> None:
    """`x.expand_as(other)`: x's axes as in `expand`, and the output takes `other`'s shape
    at run time, so every axis of `other` links with the output's."""
    _expand(flow, node)
    flow.identity_all(_args(node)[1], node)

@resizer(aten.expand.default)
def _resize_expand(node: fx.Node, r: Resize) -> Resized | None:
    sizes = list(_args(node)[1])
    changed = False
    for axis, size in enumerate(sizes):
        if isinstance(size, int) and size != -1:
            new = r.new_size(node, axis)
            if new is not None and new != size:
                sizes[axis] = new
                changed = True
    if not changed:
        return None
    return Resized((_args(node)[0], sizes, *_args(node)[2:]), dict(node.kwargs))

@rule(aten.repeat.default)
def _repeat(flow: ChannelFlow, node: fx.Node) -> None:
    """Tiling: output element j of a repeated axis of size n comes from input j % n."""
    x, repeats = _args(node)[0], list(_args(node)[1])
    r_in, r_out = flow.rank(x), flow.rank(node)
    for axis in range(r_in):
        out_axis = axis + r_out - r_in
        rep = repeats[out_axis]
        s, o = flow.slot(x, axis), flow.slot(node, out_axis)
        if rep == 1:
            flow.identity(s, o)
        elif isinstance(rep, int) and s is not None and o is not None:
            flow.gather(o, s, np.arange(flow.sizes[o]) % flow.sizes[s])
        else:
            _freeze_axis(flow, x, axis, f"dynamic repeat %{node.name}")
            _freeze_axis(flow, node, out_axis, f"dynamic repeat %{node.name}")

@rule(aten.repeat_interleave.self_int)
def _repeat_interleave(flow: ChannelFlow, node: fx.Node) -> None:
    """Along `dim`, output element j comes from input j // repeats (dim=None flattens: frozen)."""
    x, repeats = _args(node)[0], _args(node)[1]
    dim = _arg(node, 2, "dim")
    if dim is None or not isinstance(repeats, int):
        flow.freeze(x, f"repeat_interleave %{node.name} flattens or repeats dynamically")
        flow.freeze(node, f"repeat_interleave %{node.name} flattens or repeats dynamically")
        return
    rank = flow.rank(x)
    dim %= rank
    for axis in range(rank):
        if axis != dim:
            flow.identity(flow.slot(x, axis), flow.slot(node, axis))
    o = flow.slot(node, dim)
    if o is not None and flow.slot(x, dim) is not None:
        flow.gather(o, flow.slot(x, dim), np.arange(flow.sizes[o]) // repeats)
    else:
        _freeze_axis(flow, x, dim, f"dynamic repeat_interleave %{node.name}")

@resizer(aten.repeat_interleave.self_int)
def _resize_repeat_interleave(node: fx.Node, r: Resize) -> Resized | None:
    dim = _arg(node, 2, "dim")
    if dim is None or _kwargs(node).get("output_size") is None:
        return None
    new = r.new_size(node, dim)
    if new is None:
        return None
    return Resized(tuple(node.args), {**node.kwargs, "output_size": new})

@rule(aten.pad.default, aten.constant_pad_nd.default)
def _pad(flow: ChannelFlow, node: fx.Node) -> None:
    """Padded axes (the last len(pad) // 2) change size and are not linked; others link.
    An axis padded by (0, 0) links too."""
    x, pad = _args(node)[0], list(_args(node)[1])
    rank = flow.rank(x)
    padded = {}
    for k in range(len(pad) // 2):
        padded[rank - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    for axis in range(rank):
        if padded.get(axis, (0, 0)) == (0, 0):
            flow.identity(flow.slot(x, axis), flow.slot(node, axis))
        else:
            reason = f"%{node.name} pads axis {axis}"
            _freeze_axis(flow, x, axis, reason)
            _freeze_axis(flow, node, axis, reason)


# Ops that only move elements: index values (topk's) keep indexing the same slot.
index_values(
    "kept",
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
    aten.unflatten.int, aten.permute.default, aten.transpose.int, aten.t.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default,
    aten.slice.Tensor,
)
