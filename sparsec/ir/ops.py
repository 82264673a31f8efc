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
        flow.identity_all(node.args[0], node)
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
    flow.identity_all(node.args[0], node)


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
        return int(node.args[8])
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))


_CONVS = [aten.conv1d.default, aten.conv2d.default, aten.conv3d.default]


@rule(*_CONVS)
def _conv(flow: ChannelFlow, node: fx.Node) -> None:
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
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
    weight = node.args[1]
    groups = _conv_groups(node)
    new_in = r.new_size(node.args[0], 1)
    if groups == 1 or new_in is None or weight.meta["val"].shape[1] != 1:
        return None
    if len(node.args) > 6:
        return Resized((*node.args[:6], new_in, *node.args[7:]), dict(node.kwargs))
    return Resized(tuple(node.args), {**node.kwargs, "groups": new_in})


@rule(aten.linear.default)
def _linear(flow: ChannelFlow, node: fx.Node) -> None:
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
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
    x = node.args[0]
    out = node
    if isinstance(node.meta.get("val"), (tuple, list)):
        users = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        extra = [u for u in node.users if u not in users]
        for u in extra:
            flow.freeze(u, "batch-norm statistics outputs are not tracked")
        if not users:
            return
        out = users[0]
    flow.identity_all(x, out)
    channel = flow.slot(out, 1)
    for param in node.args[1:5]:
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), channel)
            flow.role(flow.slot(param, 0), "norm", _layer(param))


@rule(aten.layer_norm.default)
def _layer_norm(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    flow.identity_all(x, node)
    normalized = list(node.args[1])
    if len(normalized) != 1:
        for axis in range(flow.rank(node) - len(normalized), flow.rank(node)):
            s = flow.slot(node, axis)
            if s is not None:
                flow.freeze_slot(s, "layer_norm over several axes")
    for param in node.args[2:4]:
        if isinstance(param, fx.Node):
            flow.identity(flow.slot(param, 0), flow.slot(node, -1))
            flow.role(flow.slot(param, 0), "norm", _layer(param))


@resizer(aten.layer_norm.default)
def _resize_layer_norm(node: fx.Node, r: Resize) -> Resized | None:
    new = r.new_size(node, -1)
    if new is None or list(node.args[1]) == [new]:
        return None
    args = list(node.args)
    args[1] = [new]
    return Resized(tuple(args), dict(node.kwargs))


@rule(aten.embedding.default)
def _embedding(flow: ChannelFlow, node: fx.Node) -> None:
    weight, indices = node.args[0], node.args[1]
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
    x = node.args[0]
    for axis in range(min(2, flow.rank(node))):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis))


_REDUCTIONS = [aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default]


@rule(*_REDUCTIONS)
def _reduce(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    rank = flow.rank(x)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or range(rank))
    reduced = {d % rank for d in dims}
    keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
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
    x = node.args[0]
    rank = flow.rank(x)
    start = (node.args[1] if len(node.args) > 1 else 0) % max(rank, 1)
    end = (node.args[2] if len(node.args) > 2 else -1) % max(rank, 1)
    _link_reshape(flow, x, node, _blocks_flatten(rank, start, end))


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _view(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
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
        inner = 1
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
    shape = list(node.args[1])
    changed = False
    for axis, size in enumerate(shape):
        if isinstance(size, int) and size != -1:
            new = r.new_size(node, axis)
            if new is not None and new != size:
                shape[axis] = new
                changed = True
    if not changed:
        return None
    return Resized((node.args[0], shape, *node.args[2:]), dict(node.kwargs))


@rule(aten.permute.default)
def _permute(flow: ChannelFlow, node: fx.Node) -> None:
    x, dims = node.args[0], node.args[1]
    rank = flow.rank(x)
    for out_axis, in_axis in enumerate(dims):
        flow.identity(flow.slot(x, in_axis % rank), flow.slot(node, out_axis))


@rule(aten.transpose.int)
def _transpose(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    rank = flow.rank(x)
    d0, d1 = node.args[1] % rank, node.args[2] % rank
    order = list(range(rank))
    order[d0], order[d1] = order[d1], order[d0]
    for out_axis, in_axis in enumerate(order):
        flow.identity(flow.slot(x, in_axis), flow.slot(node, out_axis))


@rule(aten.t.default)
def _t(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    rank = flow.rank(x)
    for out_axis in range(rank):
        flow.identity(flow.slot(x, rank - 1 - out_axis), flow.slot(node, out_axis))


@rule(aten.unsqueeze.default)
def _unsqueeze(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    at = node.args[1] % flow.rank(node)
    for axis in range(flow.rank(x)):
        flow.identity(flow.slot(x, axis), flow.slot(node, axis if axis < at else axis + 1))


@rule(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    kept = [a for a in range(flow.rank(x)) if _static_size(flow, x, a) != 1 or not _is_squeezed(node, a)]
    for out_axis, in_axis in enumerate(kept):
        flow.identity(flow.slot(x, in_axis), flow.slot(node, out_axis))


def _is_squeezed(node: fx.Node, axis: int) -> bool:
    rank = node.args[0].meta["val"].dim()
    if node.target is aten.squeeze.default:
        return True
    dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    return axis in {d % rank for d in dims}


@rule(aten.cat.default)
def _cat(flow: ChannelFlow, node: fx.Node) -> None:
    tensors = node.args[0]
    rank = flow.rank(node)
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
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
    rank = node.args[0].meta["val"].dim()
    return (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % rank


@rule(*_SPLITS)
def _split(flow: ChannelFlow, node: fx.Node) -> None:
    x = node.args[0]
    rank = flow.rank(x)
    dim = _split_dim(node)
    src = flow.slot(x, dim)
    offsets = np.cumsum([0] + [t.shape[dim] for t in node.meta["val"]])
    for user in node.users:
        if user.target is not operator.getitem:
            flow.freeze(x, f"split %{node.name} used as a whole")
            continue
        k = int(user.args[1])
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
    x = node.args[0]
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
    x = node.args[0]
    rank = flow.rank(x)
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
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
    start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
    end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else size
    step = node.args[4] if len(node.args) > 4 else 1
    start = max(0, start + size if start < 0 else min(start, size))
    end = max(0, end + size if end < 0 else min(end, size))
    return start, end, step


@resizer(aten.slice.Tensor)
def _resize_slice(node: fx.Node, r: Resize) -> Resized | None:
    x = node.args[0]
    rank = x.meta["val"].dim()
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    size = x.meta["val"].shape[dim]
    kept = r.kept(x, dim)
    if kept is None or not isinstance(size, int):
        return None
    start, end, _ = _slice_bounds(node, size)
    new_start = int((kept < start).sum())
    new_end = new_start + int(((kept >= start) & (kept < end)).sum())
    if (new_start, new_end) == (start, end):
        return None
    args = list(node.args) + [None] * (4 - len(node.args))
    args[1], args[2], args[3] = dim, new_start, new_end
    return Resized(tuple(args), dict(node.kwargs))


# ---------------------------------------------------------------- plumbing
@rule(operator.getitem)
def _getitem(flow: ChannelFlow, node: fx.Node) -> None:
    producer = node.args[0]
    if not (isinstance(producer, fx.Node) and producer.target in RULES):
        flow.freeze(node, f"getitem of %{getattr(producer, 'name', producer)}, which has no rule")


@rule(aten.sym_size.int)
def _no_channels(flow: ChannelFlow, node: fx.Node) -> None:
    """Reads a dynamic size only; no channel flows through."""
