"""Op semantics for pruning: how channels flow from an op's inputs to its outputs.

Rules:
- a *slot* is one static axis of one value: `(node name, axis)`; each index of a slot is an
  element, and a rule links elements of different slots that must be removed together;
- `identity(a, b)` links a[i] with b[i]; `gather(a, b, index)` links a[i] with b[index[i]]
  (concatenation offsets, flatten blocks, head splits, grouped-conv ties);
- an op without a rule freezes every static axis of its inputs and outputs: never guess;
- a *resizer* updates an op's shape constants (view sizes, split sizes, groups) once the
  elements of its slots have been removed.

Example:
    @rule(aten.relu.default)
    def _unary(flow, node):
        flow.identity_all(_args(node)[0], node)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sympy
import torch
import torch.fx as fx

__all__ = [
    "ChannelFlow",
    "ParamRole",
    "Resize",
    "Resized",
    "Slot",
    "rule",
    "resizer",
    "RULES",
    "RESIZERS",
    "has_rule",
    "factor_reshape",
]

aten = torch.ops.aten

Slot = tuple[str, int]
ParamRole = Literal["producer", "consumer", "norm", "other"]


class ChannelFlow:
    """What rules write into: slot links, frozen slots, and parameter roles.

    The dependency analysis owns the storage; rules only call these methods.
    """

    def __init__(self) -> None:
        self.sizes: dict[Slot, int] = {}
        self.links: list[tuple[Slot, Slot, np.ndarray | None]] = []
        self.frozen: dict[Slot, str] = {}
        self.roles: dict[Slot, tuple[ParamRole, str]] = {}

    # ----- slots -----
    def slot(self, node: Any, axis: int) -> Slot | None:
        """The slot of `node`'s axis, or None if it is not a tensor or the size is symbolic."""
        if not isinstance(node, fx.Node):
            return None
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            return None
        axis = axis % val.dim()
        size = val.shape[axis]
        if not isinstance(size, int):
            return None
        key = (node.name, axis)
        self.sizes[key] = size
        return key

    @staticmethod
    def rank(node: Any) -> int:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        return val.dim() if isinstance(val, torch.Tensor) else -1

    # ----- links -----
    def identity(self, a: Slot | None, b: Slot | None) -> None:
        """Link a[i] with b[i]; a symbolic side freezes the static one."""
        if a is None and b is None:
            return
        if a is None or b is None:
            self.freeze_slot(a or b, "its size meets a dynamic dimension")  # type: ignore[arg-type]
            return
        if self.sizes[a] != self.sizes[b]:
            self.freeze_slot(a, f"size {self.sizes[a]} meets size {self.sizes[b]} of {b}")
            self.freeze_slot(b, f"size {self.sizes[b]} meets size {self.sizes[a]} of {a}")
            return
        self.links.append((a, b, None))

    def gather(self, a: Slot | None, b: Slot | None, index: np.ndarray) -> None:
        """Link a[i] with b[index[i]] (len(index) == size of a)."""
        if a is None or b is None:
            for s in (a, b):
                if s is not None:
                    self.freeze_slot(s, "its size meets a dynamic dimension")
            return
        self.links.append((a, b, np.asarray(index, dtype=np.int64)))

    def identity_all(self, src: Any, dst: Any) -> None:
        """Link every axis of `src` with the same axis of `dst` (ranks must match)."""
        for axis in range(self.rank(dst)):
            self.identity(self.slot(src, axis), self.slot(dst, axis))

    def broadcast(self, src: Any, dst: Any) -> None:
        """Link `src` to `dst` under right-aligned broadcasting; size-1 axes stay unlinked."""
        r_src, r_dst = self.rank(src), self.rank(dst)
        if r_src <= 0:
            return
        for axis in range(r_src):
            out_axis = axis + r_dst - r_src
            s = self.slot(src, axis)
            if s is not None and self.sizes[s] == 1:
                continue
            self.identity(s, self.slot(dst, out_axis))

    # ----- freezing and roles -----
    def freeze_slot(self, slot: Slot, reason: str) -> None:
        self.frozen.setdefault(slot, reason)

    def freeze(self, node: Any, reason: str) -> None:
        """Freeze every static axis of a node's value (tuples: of each getitem user)."""
        if not isinstance(node, fx.Node):
            return
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            for user in node.users:
                if user.target is operator.getitem:
                    self.freeze(user, reason)
            return
        for axis in range(self.rank(node)):
            s = self.slot(node, axis)
            if s is not None:
                self.freeze_slot(s, reason)

    def role(self, slot: Slot | None, role: ParamRole, layer: str) -> None:
        if slot is not None:
            self.roles.setdefault(slot, (role, layer))


RuleFn = Callable[[ChannelFlow, fx.Node], None]


@dataclass(frozen=True)
class Resize:
    """What a resizer may ask: the new size of a slot after removals, and its kept indices."""

    new_size: Callable[[Any, int], int | None]
    kept: Callable[[Any, int], np.ndarray | None]


@dataclass(frozen=True)
class Resized:
    """A resizer's answer: the node's new arguments, and a new op where the old one cannot
    express the new sizes (an uneven `chunk` becomes `split_with_sizes`)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    target: Any = None


ResizeFn = Callable[[fx.Node, Resize], Resized | None]

RULES: dict[Any, RuleFn] = {}
RESIZERS: dict[Any, ResizeFn] = {}


def rule(*targets: Any) -> Callable[[RuleFn], RuleFn]:
    """Register a channel-flow rule for the given ATen overloads (or Python callables)."""

    def deco(fn: RuleFn) -> RuleFn:
        for t in targets:
            RULES[t] = fn
        return fn

    return deco


def resizer(*targets: Any) -> Callable[[ResizeFn], ResizeFn]:
    """Register a shape-constant updater; returns new (args, kwargs) or None if unchanged."""

    def deco(fn: ResizeFn) -> ResizeFn:
        for t in targets:
            RESIZERS[t] = fn
        return fn

    return deco


def has_rule(node: fx.Node) -> bool:
    return node.target in RULES


def _layer(node: Any) -> str:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return str(node.target).rsplit(".", 1)[0]
    return node.name if isinstance(node, fx.Node) else "?"


# ---------------------------------------------------------------- elementwise
_UNARY = [
    aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
    aten.silu_.default, aten.sigmoid.default, aten.tanh.default, aten.hardswish.default,
    aten.hardswish_.default, aten.hardsigmoid.default, aten.hardtanh.default,
    aten.hardtanh_.default, aten.relu6.default, aten.leaky_relu.default, aten.elu.default,
    aten.softplus.default, aten.mish.default, aten.dropout.default, aten.clone.default,
    aten.contiguous.default, aten.neg.default, aten.abs.default, aten.exp.default,
    aten.sqrt.default, aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.square.default,
    aten.alias.default, aten.detach.default, aten._to_copy.default, aten.to.dtype,
    aten.to.dtype_layout, aten.type_as.default, aten.erf.default, aten.log.default,
    aten.reciprocal.default, aten.softmax.int, aten.log_softmax.int, aten._softmax.default,
    aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.clamp.default,
    aten.clamp_min.default, aten.clamp_max.default, aten.native_dropout.default,
]


@rule(*_UNARY)
def _unary(flow: ChannelFlow, node: fx.Node) -> None:
    flow.identity_all(_args(node)[0], node)


_BINARY = [
    aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.mul_.Tensor,
    aten.div.Tensor, aten.maximum.default, aten.minimum.default, aten.where.self,
    aten.pow.Tensor_Tensor, aten.rsub.Tensor,
]


@rule(*_BINARY)
def _binary(flow: ChannelFlow, node: fx.Node) -> None:
    for arg in node.args:
        if isinstance(arg, fx.Node):
            flow.broadcast(arg, node)


# ---------------------------------------------------------------- layers
def _conv_groups(node: fx.Node) -> int:
    if node.target is aten.convolution.default:
        return int(_args(node)[8])
    return int(_args(node)[6]) if len(_args(node)) > 6 else int(_kwargs(node).get("groups", 1))


_CONVS = [aten.conv1d.default, aten.conv2d.default, aten.conv3d.default]


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
    x, weight = _args(node)[0], _args(node)[1]
    bias = _args(node)[2] if len(_args(node)) > 2 else None
    layer = _layer(weight)
    out_f, w_out = flow.slot(node, -1), flow.slot(weight, 0)
    flow.identity(w_out, out_f)
    flow.role(w_out, "producer", layer)
    if isinstance(bias, fx.Node):
        flow.identity(flow.slot(bias, 0), out_f)
        flow.role(flow.slot(bias, 0), "producer", layer)
    w_in = flow.slot(weight, 1)
    flow.identity(flow.slot(x, -1), w_in)
    flow.role(w_in, "consumer", layer)
    for axis in range(flow.rank(node) - 1):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis))


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


# ---------------------------------------------------------------- pooling and reductions
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
    x = _args(node)[0]
    rank = flow.rank(x)
    dims = _args(node)[1] if len(_args(node)) > 1 else _kwargs(node).get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
    reduced = {d % rank for d in dims}
    keepdim = bool(_args(node)[2]) if len(_args(node)) > 2 else bool(_kwargs(node).get("keepdim", False))
    out_axis = 0
    for axis in range(rank):
        if axis in reduced:
            out_axis += 1 if keepdim else 0
            continue
        flow.identity(flow.slot(x, axis), flow.slot(node, out_axis))
        out_axis += 1


# ---------------------------------------------------------------- layout
@rule(aten.flatten.using_ints)
def _flatten(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    rank = flow.rank(x)
    start = (_args(node)[1] if len(_args(node)) > 1 else 0) % max(rank, 1)
    end = (_args(node)[2] if len(_args(node)) > 2 else -1) % max(rank, 1)
    _link_reshape(flow, x, node, _blocks_flatten(rank, start, end))


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
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


def _static_size(flow: ChannelFlow, node: fx.Node, axis: int) -> int | None:
    size = node.meta["val"].shape[axis]
    return size if isinstance(size, int) else None


def _freeze_axis(flow: ChannelFlow, node: fx.Node, axis: int, reason: str) -> None:
    s = flow.slot(node, axis)
    if s is not None:
        flow.freeze_slot(s, reason)


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


# ---------------------------------------------------------------- plumbing
@rule(operator.getitem)
def _getitem(flow: ChannelFlow, node: fx.Node) -> None:
    producer = _args(node)[0]
    if not (isinstance(producer, fx.Node) and producer.target in RULES):
        flow.freeze(node, f"getitem of %{getattr(producer, 'name', producer)}, which has no rule")


@rule(aten.sym_size.int)
def _no_channels(flow: ChannelFlow, node: fx.Node) -> None:
    """Reads a dynamic size only; no channel flows through."""


# ---------------------------------------------------------------- helpers for the rules below
def _args(node: fx.Node) -> tuple[Any, ...]:
    """A node's positional arguments, typed loosely: each rule knows its op's schema."""
    return node.args


def _kwargs(node: fx.Node) -> dict[str, Any]:
    """A node's keyword arguments, typed loosely like `_args`."""
    return dict(node.kwargs)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument `name` of `node`, positional at `index` or keyword."""
    if len(_args(node)) > index:
        return _args(node)[index]
    return _kwargs(node).get(name, default)


def _is_param(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _link_batch(flow: ChannelFlow, src: Any, dst: Any, src_axes: int, dst_axes: int) -> None:
    """Right-align the first `src_axes` axes of `src` on the first `dst_axes` of `dst`
    (broadcasting batch dimensions); size-1 source axes stay unlinked."""
    for axis in range(src_axes):
        out_axis = axis + dst_axes - src_axes
        if out_axis < 0:
            continue
        s = flow.slot(src, axis)
        if s is not None and flow.sizes[s] == 1:
            continue
        flow.identity(s, flow.slot(dst, out_axis))


def _weight_roles(flow: ChannelFlow, weight: Any, free_axis: int, contract_axis: int) -> None:
    """A parameter operand of a matrix product produces its free axis and consumes the
    contraction axis, exactly as a linear layer's weight does."""
    if _is_param(weight):
        layer = _layer(weight)
        flow.role(flow.slot(weight, free_axis), "producer", layer)
        flow.role(flow.slot(weight, contract_axis), "consumer", layer)


# ---------------------------------------------------------------- matrix products
def _link_matmul(flow: ChannelFlow, a: Any, b: Any, out: Any) -> None:
    """torch.matmul semantics: contraction a[-1] ~ b[-2] (b[0] if b is 1-D); the free axes
    a[-2] and b[-1] go to the output; batch axes broadcast onto the output's batch axes."""
    ra, rb, ro = flow.rank(a), flow.rank(b), flow.rank(out)
    if ra < 1 or rb < 1:
        return
    if rb == 1:
        flow.identity(flow.slot(a, -1), flow.slot(b, 0))
        for axis in range(ra - 1):
            flow.identity(flow.slot(a, axis), flow.slot(out, axis))
        return
    if ra == 1:
        flow.identity(flow.slot(a, 0), flow.slot(b, -2))
        _link_batch(flow, b, out, rb - 2, ro - 1)
        flow.identity(flow.slot(b, -1), flow.slot(out, -1))
        _weight_roles(flow, b, rb - 1, rb - 2)
        return
    flow.identity(flow.slot(a, -1), flow.slot(b, -2))
    flow.identity(flow.slot(a, -2), flow.slot(out, -2))
    flow.identity(flow.slot(b, -1), flow.slot(out, -1))
    _link_batch(flow, a, out, ra - 2, ro - 2)
    _link_batch(flow, b, out, rb - 2, ro - 2)
    if _is_param(b) and not _is_param(a):
        _weight_roles(flow, b, rb - 1, rb - 2)
    elif _is_param(a) and not _is_param(b):
        _weight_roles(flow, a, ra - 2, ra - 1)


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


# ---------------------------------------------------------------- attention
def _sdpa_rep(flow: ChannelFlow, q: Any, k: Any) -> int | None:
    """Query heads per key/value head (GQA), None where it is not a whole number."""
    hq, hk = flow.slot(q, -3), flow.slot(k, -3)
    if hq is None or hk is None:
        return None
    nq, nk = flow.sizes[hq], flow.sizes[hk]
    return nq // nk if nk and nq % nk == 0 else None


@rule(aten.scaled_dot_product_attention.default)
def _sdpa(flow: ChannelFlow, node: fx.Node) -> None:
    """q [..., Hq, L, E], k [..., Hkv, S, E], v [..., Hkv, S, Ev] -> out [..., Hq, L, Ev].

    - batch and head axes link across q, k, v and out; with `enable_gqa` query head j
      links to key/value head j // (Hq / Hkv), so a unit is one kv head with its queries;
    - E links q with k (contraction), Ev links v with out, L links q with out, S links k with v;
    - attn_mask broadcasts onto [..., Hq, L, S] (a per-head bias, as in T5, joins the heads).
    """
    q, k, v = _args(node)[0], _args(node)[1], _args(node)[2]
    mask = _arg(node, 3, "attn_mask")
    gqa = bool(_kwargs(node).get("enable_gqa", False))
    rank = flow.rank(q)
    if rank < 3 or flow.rank(k) != rank or flow.rank(v) != rank:
        for t in (q, k, v, mask, node):
            flow.freeze(t, f"scaled_dot_product_attention %{node.name} with unusual ranks")
        return
    for axis in range(rank - 2):
        flow.identity(flow.slot(q, axis), flow.slot(node, axis))
        flow.identity(flow.slot(k, axis), flow.slot(v, axis))
        if gqa and axis == rank - 3 and flow.rank(q) >= 3:
            rep = _sdpa_rep(flow, q, k)
            qs, ks = flow.slot(q, axis), flow.slot(k, axis)
            if rep is None or qs is None or ks is None:
                for t in (q, k, v, node):
                    _freeze_axis(flow, t, axis, f"grouped-query attention %{node.name} with dynamic or uneven heads")
                continue
            flow.gather(qs, ks, np.arange(flow.sizes[qs]) // rep)
            continue
        ks = flow.slot(k, axis)
        if ks is not None and flow.sizes[ks] == 1:
            continue  # broadcast key/value batch
        flow.identity(flow.slot(q, axis), ks)
    flow.identity(flow.slot(q, -2), flow.slot(node, -2))
    flow.identity(flow.slot(k, -2), flow.slot(v, -2))
    flow.identity(flow.slot(q, -1), flow.slot(k, -1))
    flow.identity(flow.slot(v, -1), flow.slot(node, -1))
    if isinstance(mask, fx.Node):
        # mask [..., L, S]: L and S are the query's and the key's sequence axes
        m_rank = flow.rank(mask)
        targets = [(q, a) for a in range(rank - 1)] + [(k, rank - 2)]
        for axis in range(m_rank):
            t_index = axis + len(targets) - m_rank
            s = flow.slot(mask, axis)
            if t_index < 0 or (s is not None and flow.sizes[s] == 1):
                continue
            target, t_axis = targets[t_index]
            flow.identity(s, flow.slot(target, t_axis))


@resizer(aten.scaled_dot_product_attention.default)
def _resize_sdpa(node: fx.Node, r: Resize) -> Resized | None:
    """The default scale is 1/sqrt(E): pin the original value when E shrinks."""
    q = _args(node)[0]
    new_e = r.new_size(q, -1)
    if new_e is None or _kwargs(node).get("scale") is not None:
        return None
    old_e = q.meta["val"].shape[-1]
    return Resized(tuple(node.args), {**node.kwargs, "scale": 1.0 / float(old_e) ** 0.5})


# ---------------------------------------------------------------- expand and repeat
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


# ---------------------------------------------------------------- norms
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


# ---------------------------------------------------------------- more elementwise ops
# Unary (and tensor-with-scalar) ops: the output has the input's shape, element for element.
_MORE_UNARY = [
    aten.cos.default, aten.sin.default, aten.floor.default, aten.ceil.default,
    aten.round.default, aten.sign.default, aten.logical_not.default, aten.bitwise_not.default,
    aten.isnan.default, aten.to.device, aten.to.other, aten.lift_fresh_copy.default,
    aten.eq.Scalar, aten.ne.Scalar, aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar,
    aten.ge.Scalar, aten.fill.Scalar, aten.zeros_like.default, aten.ones_like.default,
    aten.full_like.default, aten.empty_like.default, aten.masked_fill.Scalar,
    aten.log1p.default, aten.expm1.default, aten.sigmoid_.default, aten.tanh_.default,
    aten.gelu_.default, aten.silu_.default, aten.clamp_.default, aten.pow.Scalar,
    aten.remainder.Scalar, aten.floor_divide.Scalar if hasattr(aten.floor_divide, "Scalar") else aten.floor_divide.default,
]
for _op in _MORE_UNARY:
    RULES.setdefault(_op, _unary)

# Broadcasting ops over several tensors (masks, comparisons, selects).
_MORE_BINARY = [
    aten.eq.Tensor, aten.ne.Tensor, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor,
    aten.ge.Tensor, aten.__and__.Tensor, aten.__or__.Tensor, aten.bitwise_and.Tensor,
    aten.bitwise_or.Tensor, aten.logical_and.default, aten.logical_or.default,
    aten.where.ScalarOther, aten.where.ScalarSelf, aten.masked_fill.Tensor,
    aten.min.other, aten.max.other, aten.floor_divide.default, aten.remainder.Tensor,
    aten.div.Tensor_mode, aten.atan2.default,
]
for _op in _MORE_BINARY:
    RULES.setdefault(_op, _binary)

# masked_fill.Scalar(x, mask, value): the mask broadcasts like a second operand.
RULES[aten.masked_fill.Scalar] = _binary


# ---------------------------------------------------------------- ops without channels
@rule(
    aten._assert_tensor_metadata.default, aten._assert_scalar.default,
    aten._assert_async.msg, aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default,
)
def _check_only(flow: ChannelFlow, node: fx.Node) -> None:
    """Runtime checks: no output, no channels; the resizer drops stale size checks."""


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


def _dim_arg(node: fx.Node, index: int, name: str, default: int, rank: int) -> int:
    return int(_arg(node, index, name, default)) % max(rank, 1)


def _link_except(flow: ChannelFlow, x: Any, out: Any, dim: int, reason: str) -> None:
    """Same-rank op along `dim`: other axes link; `dim` is frozen on both sides."""
    for axis in range(flow.rank(x)):
        if axis == dim:
            _freeze_axis(flow, x, axis, reason)
            _freeze_axis(flow, out, axis, reason)
        else:
            flow.identity(flow.slot(x, axis), flow.slot(out, axis))


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


@rule(aten.index_select.default)
def _index_select(flow: ChannelFlow, node: fx.Node) -> None:
    x = _args(node)[0]
    dim = int(_args(node)[1]) % flow.rank(x)
    _link_except(flow, x, node, dim, f"%{node.name} gathers axis {dim} by index values")


@rule(aten.gather.default)
def _gather_op(flow: ChannelFlow, node: fx.Node) -> None:
    """out = index's shape; on axes other than `dim`, out[i] reads x[i] (linked when x and
    index agree in size); `dim` is addressed by values, so it is frozen."""
    x, index = _args(node)[0], _args(node)[2]
    rank = flow.rank(x)
    dim = int(_args(node)[1]) % rank
    flow.identity_all(index, node)
    reason = f"%{node.name} gathers axis {dim} by index values"
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
    the axes they produce. Non-adjacent index tensors (result axes moved first): frozen."""
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


# ---------------------------------------------------------------- padding and resampling
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


_UPSAMPLES = [
    aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec,
    aten.upsample_bilinear2d.vec, aten.upsample_bicubic2d.vec, aten.upsample_linear1d.vec,
    aten.upsample_trilinear3d.vec, aten.upsample_nearest1d.default,
    aten.upsample_nearest2d.default, aten.upsample_nearest3d.default,
    aten.upsample_bilinear2d.default, aten.upsample_bicubic2d.default,
]
for _op in _UPSAMPLES:
    RULES.setdefault(_op, _pool)
