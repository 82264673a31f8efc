"""The OpInfo table: everything sparsec knows about one op, registered once.

Rules:
- one `OpInfo` per op overload (or Python callable such as `operator.getitem`): its
  channel-flow rule, its resizer, its layer kind and its MAC count; each field is set by
  one registration, and a second registration of the same field raises (no silent
  overwrite, no silent ignore);
- `rule`, `resizer`, `layer`, `macs` and `index_values` are what the family modules use;
- consumers ask `op_info(target)`: dependency analysis (flow), shrinking (resize), metrics
  and the allocation's size estimate (macs, mac_axes), calibration statistics and
  reconstruction (layer kind).

Example:
    @rule(aten.relu.default)
    def _unary(flow, node):
        flow.identity_all(_args(node)[0], node)

    op_info(aten.relu.default).flow  # _unary
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch.fx as fx

from sparsec.ir.opinfo._flow import IndexValues, ResizeFn, RuleFn

__all__ = [
    "LayerKind",
    "MacAxesFn",
    "MacsFn",
    "OpInfo",
    "ShapeFn",
    "all_op_infos",
    "has_rule",
    "index_values",
    "layer",
    "macs",
    "op_info",
    "resizer",
    "rule",
]

LayerKind = Literal["linear", "conv"]
ShapeFn = Callable[[Any], list[int]]
MacsFn = Callable[[fx.Node, ShapeFn], int]
"""MACs of one sample through the node, given the concrete shape of any value."""
MacAxesFn = Callable[[fx.Node], list[tuple[Any, int]]]
"""The (value, axis) pairs whose kept fraction scales the node's MACs when channels go."""


@dataclass(frozen=True)
class OpInfo:
    """What sparsec knows about one op."""

    target: Any
    flow: RuleFn | None = None
    resize: ResizeFn | None = None
    layer: LayerKind | None = None
    weight_arg: int | None = None  # where a layer's weight is among its arguments
    spatial_dims: int = 0  # a conv's spatial rank (1 for conv1d, 2 for conv2d)
    macs: MacsFn | None = None
    mac_axes: MacAxesFn | None = None
    index_values: IndexValues | None = None  # what it does with integer values that index a slot


_TABLE: dict[Any, OpInfo] = {}


def _set(target: Any, **fields: Any) -> None:
    info = _TABLE.get(target, OpInfo(target))
    for name in fields:
        if getattr(info, name) not in (None, 0):
            raise ValueError(f"{target}: OpInfo.{name} is already registered")
    _TABLE[target] = replace(info, **fields)


def rule(*targets: Any) -> Callable[[RuleFn], RuleFn]:
    """Register the channel-flow rule of `targets`."""

    def deco(fn: RuleFn) -> RuleFn:
        for target in targets:
            _set(target, flow=fn)
        return fn

    return deco


def resizer(*targets: Any) -> Callable[[ResizeFn], ResizeFn]:
    """Register the shape-constant updater of `targets` (new arguments, or None: unchanged)."""

    def deco(fn: ResizeFn) -> ResizeFn:
        for target in targets:
            _set(target, resize=fn)
        return fn

    return deco


def layer(target: Any, kind: LayerKind, weight_arg: int, spatial_dims: int = 0) -> None:
    """Declare `target` a weighted layer of `kind` whose weight is argument `weight_arg`."""
    _set(target, layer=kind, weight_arg=weight_arg, spatial_dims=spatial_dims)


def macs(*targets: Any, axes: MacAxesFn) -> Callable[[MacsFn], MacsFn]:
    """Register the MAC count of `targets` and the axes whose pruning scales it."""

    def deco(fn: MacsFn) -> MacsFn:
        for target in targets:
            _set(target, macs=fn, mac_axes=axes)
        return fn

    return deco


def index_values(kind: IndexValues, *targets: Any) -> None:
    """Declare what `targets` do with index values: "kept" (moved or copied unchanged, so
    the output indexes the same slot) or "unread" (only their shape is read)."""
    for target in targets:
        _set(target, index_values=kind)


def op_info(target: Any) -> OpInfo | None:
    """The OpInfo of an op overload (or callable), or None when sparsec knows nothing of it.

    Importing this module imports its package first, whose families register every op.
    """
    return _TABLE.get(target)


def all_op_infos() -> dict[Any, OpInfo]:
    return dict(_TABLE)


def has_rule(node: fx.Node) -> bool:
    info = op_info(node.target)
    return info is not None and info.flow is not None
