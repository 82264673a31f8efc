"""How channels flow through an op: slots, links, freezing, roles, and the helpers rules share.

Rules:
- a *slot* is one static axis of one value: `(node name, axis)`; each index of a slot is an
  element, and a rule links elements of different slots that must be removed together;
- `identity(a, b)` links a[i] with b[i]; `gather(a, b, index)` links a[i] with b[index[i]]
  (concatenation offsets, flatten blocks, head splits, grouped-conv ties);
- an op without a rule freezes every static axis of its inputs and outputs: never guess;
- a *resizer* updates an op's shape constants (view sizes, split sizes, groups) once the
  elements of its slots have been removed;
- integer values can *address* a slot: `topk`'s indices name elements of the axis it chose
  from (a router's experts). The addressed slot may lose elements only if every op that
  reads those values says how: a rule that understands them links what they index
  (`x[indices]` gathers x's axis 0 from the slot) and calls `understood`; an op whose
  `index_values` is "kept" passes the values on unchanged (views, copies), "unread" ops
  read only their shape; any other reader freezes the addressed slot, with its name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.fx as fx

Slot = tuple[str, int]
ParamRole = Literal["producer", "consumer", "norm", "other"]
IndexValues = Literal["kept", "unread"]


class ChannelFlow:
    """What rules write into: slot links, frozen slots, and parameter roles.

    The dependency analysis owns the storage; rules only call these methods.
    """

    def __init__(self) -> None:
        self.sizes: dict[Slot, int] = {}
        self.links: list[tuple[Slot, Slot, np.ndarray | None]] = []
        self.frozen: dict[Slot, str] = {}
        self.roles: dict[Slot, tuple[ParamRole, str]] = {}
        self.addresses: dict[str, tuple[Slot, str]] = {}
        self.selections: dict[Slot, list[tuple[str, int]]] = {}
        self.understood_by: set[str] = set()

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

    # ----- index values -----
    def address(self, node: fx.Node, slot: Slot, source: str) -> None:
        """`node`'s integer values index elements of `slot`; `source` names their origin (a topk)."""
        self.addresses.setdefault(node.name, (slot, source))

    def addressed(self, node: Any) -> Slot | None:
        """The slot whose elements `node`'s values index, or None."""
        found = self.addresses.get(node.name) if isinstance(node, fx.Node) else None
        return found[0] if found is not None else None

    def select(self, slot: Slot, node: fx.Node, k: int) -> None:
        """`node` chooses `k` elements of `slot` per row (topk): at least k must stay."""
        self.selections.setdefault(slot, []).append((node.name, k))

    def understood(self, node: fx.Node) -> None:
        """`node`'s rule linked what its index inputs address: they need no freezing."""
        self.understood_by.add(node.name)

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

def _layer(node: Any) -> str:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return str(node.target).rsplit(".", 1)[0]
    return node.name if isinstance(node, fx.Node) else "?"

def _param_part(node: Any) -> Any:
    """The parameter that `node` is a row block of (`getitem(split(param, ..., 0))`, as the
    packed q/k/v projection of cross-attention is split), else `node` itself: the parameter
    holds the producer and consumer roles of each of its blocks."""
    if not (isinstance(node, fx.Node) and node.target is operator.getitem):
        return node
    split = node.args[0]
    if not (isinstance(split, fx.Node) and _is_param(split.args[0])):
        return node
    splits = (torch.ops.aten.split_with_sizes.default, torch.ops.aten.split.Tensor, torch.ops.aten.chunk.default)
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    return split.args[0] if split.target in splits and dim == 0 else node

def _static_size(flow: ChannelFlow, node: fx.Node, axis: int) -> int | None:
    size = node.meta["val"].shape[axis]
    return size if isinstance(size, int) else None

def _freeze_axis(flow: ChannelFlow, node: fx.Node, axis: int, reason: str) -> None:
    s = flow.slot(node, axis)
    if s is not None:
        flow.freeze_slot(s, reason)

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
    wa, wb = _expert_weight(flow, a), _expert_weight(flow, b)
    if _is_param(wb) and not _is_param(wa):
        _weight_roles(flow, wb, rb - 1, rb - 2)
    elif _is_param(wa) and not _is_param(wb):
        _weight_roles(flow, wa, ra - 2, ra - 1)

def _expert_weight(flow: ChannelFlow, node: Any) -> Any:
    """The parameter that `node` gathers each token's expert from (`param[topk_indices]`,
    the same rank: its other axes keep their positions), else `node` itself: the parameter
    holds the roles of a matrix product's weight, for every expert at once."""
    if not (isinstance(node, fx.Node) and node.target is torch.ops.aten.index.Tensor):
        return node
    param, indices = _args(node)[0], list(_args(node)[1])
    if not (_is_param(param) and len(indices) == 1 and flow.addressed(indices[0]) is not None):
        return node
    return param if flow.rank(param) == flow.rank(node) else node

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
