"""Dependency groups: which channels of which tensors must be removed together.

Rules:
- every op's rule (its OpInfo's `flow`, sparsec.ir.opinfo) links elements of slots; connected elements form a
  *unit* (one channel, one head, a channel tied across groups), found with scipy's
  connected components so large graphs cost seconds;
- connected slots form a *group*; a group is prunable only where a layer produces its
  channels (a "producer" weight slice), and units touching a model input or output, or an
  op without a rule, are frozen with the reason;
- an axis that a `topk` chooses among (a mixture-of-experts router's experts, with every
  expert parameter that the chosen indices gather) forms a group with `routing` set: its
  units are whole experts, frozen for channel pruning (they are removed by `prune-experts`,
  which keeps k of them); `routing.reason` says why they cannot be removed at all (an op
  that reads the indices without a rule for them, a model output), never guessed; the
  experts' own axes (FFN channels) form ordinary groups, one channel from every expert;
- only shapes are read (node.meta), never weights, so meta-device models work.

Example:
    deps = am.get(DependencyGroups())
    for group in deps.groups: print(group.describe())
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

import networkx as nx
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch.fx as fx
from torch.utils import _pytree as pytree

from sparsec.ir import Graph
from sparsec.ir.opinfo import ChannelFlow, ParamRole, Slot, has_rule, op_info
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["DependencyGroups", "DependencyInfo", "DependencyGroup", "ParamSlice", "Routing"]


@dataclass(frozen=True)
class ParamSlice:
    """One axis of one parameter or buffer that a group slices."""

    target: str
    axis: int
    role: ParamRole
    layer: str
    node: str

    @property
    def slot(self) -> Slot:
        return self.node, self.axis


@dataclass(frozen=True)
class Routing:
    """A group that `topk` chooses among: a mixture-of-experts router's experts."""

    selectors: tuple[str, ...]  # the topk nodes
    chosen: tuple[Slot, ...]  # the axis each chooses among (a router's probabilities)
    top_k: int  # the most any of them chooses: at least this many units must stay
    reason: str = ""  # why no unit can be removed ('' when they can)


@dataclass
class DependencyGroup:
    """Coupled slots and the units (channels, heads) that can be removed from all of them."""

    index: int
    slots: tuple[Slot, ...]
    params: tuple[ParamSlice, ...]
    units: np.ndarray
    frozen_units: dict[int, str] = field(default_factory=dict)
    slot_unit_sets: tuple[np.ndarray, ...] = ()
    """The distinct units of each slot: a slot must keep one of them, or a layer is emptied."""
    routing: Routing | None = None

    def survivors(self, scores: np.ndarray) -> np.ndarray:
        """Units that must stay so no slot loses all its indices: per slot with no frozen
        unit, its best-scoring unit (`scores` aligned with `units`)."""
        keep: set[int] = set()
        for labels in self.slot_unit_sets:
            if any(int(u) in self.frozen_units for u in labels) or keep.intersection(labels.tolist()):
                continue
            best = labels[np.argmax(scores[np.searchsorted(self.units, labels)])]
            keep.add(int(best))
        return np.array(sorted(keep), dtype=np.int64)

    @property
    def prunable_units(self) -> np.ndarray:
        if not self.frozen_units:
            return self.units
        return self.units[~np.isin(self.units, list(self.frozen_units))]

    @property
    def layers(self) -> list[str]:
        return sorted({p.layer for p in self.params if p.role == "producer"})

    def describe(self) -> str:
        layers = ", ".join(self.layers) or "-"
        frozen = f", {len(self.frozen_units)} frozen" if self.frozen_units else ""
        return f"group {self.index}: {len(self.units)} units{frozen} [{layers}]"


@dataclass
class DependencyInfo:
    """The result: groups, the unit of every slot index, and why things are frozen."""

    groups: list[DependencyGroup]
    slot_units: dict[Slot, np.ndarray]
    coupling: nx.Graph
    frozen_reasons: dict[Slot, str]
    unruled_ops: dict[str, list[str]]

    def keep_indices(self, slot: Slot, removed: np.ndarray) -> np.ndarray:
        """Indices of `slot` that survive when `removed` units go."""
        return np.nonzero(~np.isin(self.slot_units[slot], removed))[0]

    def group_of(self, layer: str) -> list[DependencyGroup]:
        return [g for g in self.groups if layer in g.layers]


def _tie_shared_parameters(graph: Graph, flow: ChannelFlow) -> None:
    """get_attr nodes that read the same tensor (tied weights) must shrink together."""
    by_tensor: dict[int, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "get_attr":
            tensor = graph.tensor(str(node.target))
            by_tensor[id(tensor)].append(node)
    for nodes in by_tensor.values():
        for other in nodes[1:]:
            flow.identity_all(nodes[0], other)


def _follow_indices(flow: ChannelFlow, node: fx.Node) -> None:
    """Pass index values on through ops that keep them; freeze what other readers index."""
    info = op_info(node.target) if node.op == "call_function" else None
    kind = info.index_values if info is not None else None
    for arg in node.all_input_nodes:
        found = flow.addresses.get(arg.name)
        if found is None or kind == "unread" or node.name in flow.understood_by:
            continue
        slot, source = found
        if kind == "kept" and node.args and node.args[0] is arg:
            flow.address(node, slot, source)
            continue
        op = str(node.target) if node.op != "output" else "the model output"
        flow.freeze_slot(
            slot,
            f"the indices chosen by %{source} reach %{node.name} ({op}), which has no rule for "
            "index values, so what they index cannot be followed",
        )


def _collect_flow(graph: Graph) -> tuple[ChannelFlow, dict[str, list[str]]]:
    flow = ChannelFlow()
    unruled: dict[str, list[str]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "placeholder":
            flow.freeze(node, "model input")
        elif node.op == "output":
            for leaf in pytree.tree_leaves(node.args[0]):
                flow.freeze(leaf, "model output")
        elif node.op == "call_function" and has_rule(node):
            op_info(node.target).flow(flow, node)  # type: ignore[union-attr,misc]
        elif node.op in ("call_function", "call_module", "call_method"):
            op = str(node.target)
            unruled[op].append(node.name)
            reason = f"channels of %{node.name} flow through {op}, which has no rule"
            for arg in node.all_input_nodes:
                flow.freeze(arg, reason)
            flow.freeze(node, reason)
        _follow_indices(flow, node)
    _tie_shared_parameters(graph, flow)
    return flow, dict(unruled)


def _units(flow: ChannelFlow) -> tuple[dict[Slot, np.ndarray], int]:
    """Label every element of every slot with its unit (connected component)."""
    bases: dict[Slot, int] = {}
    total = 0
    for slot, size in flow.sizes.items():
        bases[slot] = total
        total += size
    src, dst = [], []
    for a, b, index in flow.links:
        n = flow.sizes[a]
        src.append(np.arange(n) + bases[a])
        dst.append((np.arange(n) if index is None else index) + bases[b])
    if src:
        rows, cols = np.concatenate(src), np.concatenate(dst)
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(total, total)
    )
    _, labels = scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    return {slot: labels[base : base + flow.sizes[slot]] for slot, base in bases.items()}, total


def _param_slices(graph: Graph, flow: ChannelFlow, slots: list[Slot]) -> list[ParamSlice]:
    params = []
    for name, axis in slots:
        node = graph.node(name)
        if node.op == "get_attr":
            role, layer = flow.roles.get((name, axis), ("other", str(node.target).rsplit(".", 1)[0]))
            params.append(ParamSlice(str(node.target), axis, role, layer, name))
    return params


def _routing(flow: ChannelFlow, slots: list[Slot], frozen: dict[int, str]) -> Routing | None:
    """The group's routing when a topk chooses among one of its slots, else None."""
    chosen = [(s, pick) for s in slots for pick in flow.selections.get(s, [])]
    if not chosen:
        return None
    reason = next(iter(frozen.values()), "")
    names = tuple(name for _, (name, _) in chosen)
    slots = tuple(slot for slot, _ in chosen)
    return Routing(names, slots, max(k for _, (_, k) in chosen), reason)


@register
@pass_dataclass
class DependencyGroups(Analysis):
    """Couple channels across the graph and report prunable groups (see module docstring)."""

    name: ClassVar[str] = "dependency-groups"

    def run(self, graph: Graph, am: AnalysisManager) -> DependencyInfo:
        flow, unruled = _collect_flow(graph)
        slot_units, _ = _units(flow)
        frozen_units: dict[int, str] = {}
        for slot, reason in flow.frozen.items():
            for unit in np.unique(slot_units[slot]):
                frozen_units.setdefault(int(unit), reason)
        coupling = nx.Graph()
        coupling.add_nodes_from(flow.sizes)
        coupling.add_edges_from((a, b) for a, b, _ in flow.links)
        position = {n.name: i for i, n in enumerate(graph.nodes)}

        def order(slot: Slot) -> tuple[int, int]:
            return position[slot[0]], slot[1]

        groups: list[DependencyGroup] = []
        components = sorted(nx.connected_components(coupling), key=lambda c: min(map(order, c)))
        for slots_set in components:
            slots = sorted(slots_set, key=order)
            params = _param_slices(graph, flow, slots)
            if not any(p.role == "producer" for p in params):
                continue
            units = np.unique(np.concatenate([slot_units[s] for s in slots]))
            frozen = {int(u): frozen_units[int(u)] for u in units if int(u) in frozen_units}
            slot_sets = tuple(np.unique(slot_units[s]) for s in slots)
            routing = _routing(flow, slots, frozen)
            if routing is not None:
                held = (
                    f"%{routing.selectors[0]} chooses the top {routing.top_k} of these experts: "
                    "prune-experts removes whole experts, channel pruning does not"
                )
                frozen = {int(u): frozen.get(int(u), held) for u in units}
            groups.append(
                DependencyGroup(
                    len(groups), tuple(slots), tuple(params), units, frozen, slot_sets, routing
                )
            )
        return DependencyInfo(groups, slot_units, coupling, dict(flow.frozen), unruled)
