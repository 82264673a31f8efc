"""Stream calibration data through a graph: tap values, edit them, or collect gradients.

Rules:
- values are handed to callbacks as they are computed and freed as soon as no later node
  needs them (torch.fx.Interpreter with garbage collection), so memory stays bounded by one
  batch; callbacks keep running sums, never the tensors;
- a run can stop right after a node (`stop_after`), so a statistic of an early layer does
  not pay for the whole network;
- gradients come from `torch.func.functional_call` on detached copies, so neither the
  graph's parameters nor their `.grad` change (analyses must not edit anything).

Example:
    sums = torch.zeros(16)
    for args, kwargs in calibration:
        tap(graph.module, args, kwargs, watch={"relu": lambda v: sums.add_(v.abs().sum((0, 2, 3)))})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
from torch.fx import _pytree as fx_pytree

from sparsec.calibration import Calibration
from sparsec.ir import Graph
from sparsec.ir.opinfo import LayerKind, op_info
from sparsec.passes.analysis.dependency_groups import DependencyInfo

__all__ = [
    "ChannelStats",
    "ConsumerInput",
    "accumulate_gradients",
    "channel_axis",
    "channel_stats",
    "consumer_inputs",
    "fan_out",
    "flat_inputs",
    "tap",
]

Watch = Mapping[str, Callable[[torch.Tensor], None]]
Transform = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]



def layer_kind(op: fx.Node) -> LayerKind | None:
    """"conv" or "linear" for a weighted layer (its OpInfo), else None."""
    info = op_info(op.target)
    return info.layer if info is not None else None


class _Stop(Exception):
    """Raised inside the interpreter once the last node of interest has run."""


class _Tap(fx.Interpreter):
    def __init__(
        self, module: fx.GraphModule, watch: Watch, transform: Transform, stop_after: str | None
    ) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.watch, self.transform, self.stop_after = watch, transform, stop_after

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.transform:
            result = self.transform[n.name](result)
        if n.name in self.watch:
            self.watch[n.name](result)
        if n.name == self.stop_after:
            raise _Stop
        return result


def fan_out(fns: list[Callable[[Any], None]]) -> Callable[[Any], None]:
    """One watch callback that calls each of `fns` (several statistics of one value)."""

    def call(value: Any) -> None:
        for fn in fns:
            fn(value)

    return call


def flat_inputs(module: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The module's call inputs flattened into its placeholders' order."""
    info = getattr(module.graph._codegen, "pytree_info", None)
    if info is None or info.in_spec is None:
        return [*args, *kwargs.values()]
    return list(fx_pytree.tree_flatten_spec((list(args), kwargs), info.in_spec))


def tap(
    module: fx.GraphModule,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    watch: Watch | None = None,
    transform: Transform | None = None,
    stop_after: str | None = None,
) -> Any:
    """Run `module`, calling `watch[name](value)` and replacing values by `transform[name]`.

    Returns the flat outputs, or None when the run stopped at `stop_after`.
    """
    interpreter = _Tap(module, watch or {}, transform or {}, stop_after)
    try:
        with torch.no_grad():
            return interpreter.run(*flat_inputs(module, args, kwargs), enable_io_processing=False)
    except _Stop:
        return None


def channel_axis(op: fx.Node) -> int:
    """The channel axis of a conv's (1) or linear's (last) input."""
    if layer_kind(op) == "conv":
        return 1
    val = op.args[0].meta["val"]  # type: ignore[union-attr]
    return val.dim() - 1


@dataclass(frozen=True)
class ConsumerInput:
    """A conv/linear layer that reads a group's channels: the op, its weight and its input."""

    op: fx.Node
    weight: str
    group: int

    @property
    def input(self) -> fx.Node:
        return self.op.args[0]  # type: ignore[return-value]

    @property
    def axis(self) -> int:
        return channel_axis(self.op)

    @property
    def slot(self) -> tuple[str, int]:
        return self.input.name, self.axis


def consumer_inputs(graph: Graph, deps: DependencyInfo) -> list[ConsumerInput]:
    """Every (conv/linear op, group) whose input channels belong to that group, graph order."""
    nodes = {n.name: n for n in graph.nodes}
    found: list[ConsumerInput] = []
    for group in deps.groups:
        for param in group.params:
            if param.role != "consumer":
                continue
            weight = nodes[param.node]
            for op in weight.users:
                if layer_kind(op) is not None and op.args[1] is weight:
                    consumer = ConsumerInput(op, param.target, group.index)
                    if consumer.slot in deps.slot_units:
                        found.append(consumer)
    order = {name: i for i, name in enumerate(nodes)}
    return sorted(found, key=lambda c: order[c.op.name])


def accumulate_gradients(
    graph: Graph,
    calibration: Calibration,
    targets: Iterable[str],
    mode: Literal["sum", "square"],
    who: str,
) -> dict[str, torch.Tensor]:
    """Per target: the sum over batches of the loss gradient ("sum") or its square ("square")."""
    loss_fn = calibration.require_loss(who)
    names: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for target in targets:
        tensor = graph.tensor(target)
        if tensor.is_floating_point():
            aliases[target] = names.setdefault(id(tensor), target)
    leaves = {
        name: graph.tensor(name).detach().requires_grad_(True) for name in set(aliases.values())
    }
    totals = {name: torch.zeros_like(leaf, dtype=torch.float64) for name, leaf in leaves.items()}
    order = list(leaves)
    with torch.enable_grad():
        for args, kwargs, batch in calibration.with_batches():
            outputs = torch.func.functional_call(graph.module, leaves, args, kwargs)
            grads = torch.autograd.grad(
                loss_fn(outputs, batch), [leaves[n] for n in order], allow_unused=True
            )
            for name, grad in zip(order, grads, strict=True):
                if grad is not None:
                    g = grad.detach().double()
                    totals[name] += g if mode == "sum" else g * g
    return {target: totals[name] for target, name in aliases.items()}


@dataclass
class ChannelStats:
    """Running per-channel sums of one value over the calibration data."""

    abs_sum: torch.Tensor
    square_sum: torch.Tensor
    zeros: torch.Tensor
    count: int = 0

    def add(self, value: torch.Tensor, axis: int) -> None:
        moved = value.detach().double().movedim(axis, 0).reshape(value.shape[axis], -1)
        self.abs_sum += moved.abs().sum(1)
        self.square_sum += moved.square().sum(1)
        self.zeros += (moved == 0).sum(1)
        self.count += moved.shape[1]


def channel_stats(
    graph: Graph, calibration: Calibration, slots: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], ChannelStats]:
    """Stream the calibration data once and sum |x|, x² and zeros per channel of each slot."""
    stats: dict[tuple[str, int], ChannelStats] = {}
    watch: dict[str, list[tuple[int, ChannelStats]]] = {}
    sizes = {
        n.name: n.meta["val"] for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)
    }
    for name, axis in dict.fromkeys(slots):
        size = int(sizes[name].shape[axis])
        entry = ChannelStats(
            torch.zeros(size, dtype=torch.float64),
            torch.zeros(size, dtype=torch.float64),
            torch.zeros(size, dtype=torch.float64),
        )
        stats[(name, axis)] = entry
        watch.setdefault(name, []).append((axis, entry))

    def update(entries: list[tuple[int, ChannelStats]]) -> Callable[[torch.Tensor], None]:
        def add(value: torch.Tensor) -> None:
            for axis, entry in entries:
                entry.add(value, axis)

        return add

    callbacks = {name: update(entries) for name, entries in watch.items()}
    order = [n.name for n in graph.nodes if n.name in watch]
    for args, kwargs in calibration:
        tap(graph.module, args, kwargs, watch=callbacks, stop_after=order[-1] if order else None)
    return stats
