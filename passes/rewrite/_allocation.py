"""How many units each group loses: uniform or global allocation, and a size estimate to hit a
parameter or MACs target without rewriting the graph.

Rules:
- a *plan* maps one scalar `level` in [0, 1] to the units removed from every group; more
  level never removes less, so a target is met by bisection on the level;
- local: each group loses `floor(level * prunable)`; global: the `round(level * N)`
  lowest-scoring prunable units of all groups together go;
- every group then obeys its limits: at most `max_ratio` of its prunable units, at least
  `min_channels` left, and a kept count that is a multiple of `round_to` (rounded up, so a
  limit is never crossed; a group too small for one multiple stays whole);
- `SizeEstimate` counts parameters and MACs after a removal from the dependency groups' slots:
  a tensor's axis shrinks by the removed labels of its slot, a conv/linear's MACs scale with
  its kept output and input channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch.fx as fx

from sparsec.ir import Graph
from sparsec.ir.opinfo import Slot, op_info
from sparsec.metrics import macs_by_node
from sparsec.passes.analysis.dependency_groups import DependencyGroup, DependencyInfo

__all__ = [
    "Allocation",
    "SizeEstimate",
    "GroupLimits",
    "limits_for",
    "TargetKind",
    "bisect_level",
    "plan_removal",
]

Allocation = Literal["local", "global"]
TargetKind = Literal["channels", "params", "macs"]



@dataclass(frozen=True)
class GroupLimits:
    """One group's candidates (lowest score first) and how many of them may go."""

    group: DependencyGroup
    ranked: np.ndarray
    scores: np.ndarray
    most: int
    fixed_ratio: float | None
    round_to: int

    def count(self, wanted: int) -> int:
        """`wanted` clamped to the limits and rounded so the kept count is a multiple."""
        size = len(self.group.units)
        count = max(0, min(wanted, self.most))
        kept = math.ceil((size - count) / self.round_to) * self.round_to
        return 0 if kept > size else size - kept


def limits_for(
    group: DependencyGroup,
    scores: np.ndarray,
    max_ratio: float,
    min_channels: int,
    round_to: int,
    fixed_ratio: float | None,
) -> GroupLimits:
    """The limits of one group (see module docstring)."""
    prunable = group.prunable_units
    candidates = prunable[~np.isin(prunable, group.survivors(scores))]
    candidate_scores = scores[np.searchsorted(group.units, candidates)]
    order = np.argsort(candidate_scores, kind="stable")
    ratio = max_ratio if fixed_ratio is None else fixed_ratio
    most = min(math.floor(ratio * len(prunable)), len(candidates), len(group.units) - min_channels)
    return GroupLimits(
        group, candidates[order], candidate_scores[order], max(most, 0), fixed_ratio, round_to
    )


def plan_removal(
    limits: Sequence[GroupLimits], allocation: Allocation, level: float
) -> list[np.ndarray]:
    """The units removed from each group at `level` (see module docstring)."""
    wanted = [0] * len(limits)
    free = [i for i, lim in enumerate(limits) if lim.fixed_ratio is None]
    for i, lim in enumerate(limits):
        if lim.fixed_ratio is not None:
            wanted[i] = lim.most
        elif allocation == "local":
            wanted[i] = math.floor(level * len(lim.ranked) + 1e-9)
    if allocation == "global" and free:
        pooled = np.concatenate([limits[i].scores for i in free])
        owner = np.concatenate([np.full(len(limits[i].scores), i) for i in free])
        rank = np.argsort(pooled, kind="stable")
        take = round(level * len(pooled))
        counts = np.bincount(owner[rank[:take]], minlength=len(limits))
        for i in free:
            wanted[i] = int(counts[i])
    return [lim.ranked[: lim.count(w)] for lim, w in zip(limits, wanted, strict=True)]


def bisect_level(
    measure: Callable[[float], float], target: float, steps: int = 40
) -> tuple[float, float]:
    """The level whose measure is closest to `target` (measure grows with level)."""
    lo, hi = 0.0, 1.0
    m_lo, m_hi = measure(lo), measure(hi)
    if m_hi <= target:
        return hi, m_hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        m_mid = measure(mid)
        if m_mid < target:
            lo, m_lo = mid, m_mid
        else:
            hi, m_hi = mid, m_mid
    return (lo, m_lo) if target - m_lo <= m_hi - target else (hi, m_hi)


class SizeEstimate:
    """Parameters and MACs of the graph after removing units, without rewriting it."""

    def __init__(self, graph: Graph, deps: DependencyInfo) -> None:
        self.deps = deps
        self.params_before = graph.num_parameters()
        self.macs = macs_by_node(graph)
        self.macs_before = sum(self.macs.values())
        nodes = {n.name: n for n in graph.nodes}
        first_node: dict[int, str] = {}
        for node in nodes.values():
            if node.op == "get_attr":
                first_node.setdefault(id(graph.tensor(str(node.target))), node.name)
        self.tensors: list[tuple[tuple[int, ...], list[Slot | None]]] = []
        for param in dict.fromkeys(graph.module.parameters()):
            name = first_node.get(id(param))
            if name is None:
                continue
            slots = [
                (name, a) if (name, a) in deps.slot_units else None for a in range(param.dim())
            ]
            self.tensors.append((tuple(param.shape), slots))
        self.ops: list[tuple[str, list[Slot]]] = []
        for name in self.macs:
            self.ops.append((name, self._mac_slots(nodes[name])))

    def _mac_slots(self, node: fx.Node) -> list[Slot]:
        """The slots whose kept fraction scales the node's MACs (its OpInfo's `mac_axes`)."""
        info = op_info(node.target)
        if info is None or info.mac_axes is None:
            return []
        candidates = [(value.name, axis) for value, axis in info.mac_axes(node)]
        return [s for s in candidates if s in self.deps.slot_units]

    def _kept(self, slot: Slot, removed: np.ndarray) -> float:
        labels = self.deps.slot_units[slot]
        return 1.0 - np.isin(labels, removed).sum() / len(labels)

    def params_after(self, removed: np.ndarray) -> float:
        total = 0.0
        for shape, slots in self.tensors:
            size = float(np.prod(shape))
            for slot in slots:
                if slot is not None:
                    size *= self._kept(slot, removed)
            total += size
        return total

    def macs_after(self, removed: np.ndarray) -> float:
        total = 0.0
        for name, slots in self.ops:
            value = float(self.macs[name])
            for slot in slots:
                value *= self._kept(slot, removed)
            total += value
        return total

    def removed_fraction(self, kind: TargetKind, removed: np.ndarray, prunable: int) -> float:
        """The fraction of `kind` that removing `removed` takes away (channels: of `prunable`)."""
        if kind == "params":
            return 1.0 - self.params_after(removed) / max(self.params_before, 1)
        if kind == "macs":
            return 1.0 - self.macs_after(removed) / max(self.macs_before, 1)
        return len(removed) / max(prunable, 1)
