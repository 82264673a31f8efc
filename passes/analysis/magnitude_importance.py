"""Magnitude importance: the L1 or L2 norm of each unit's producing weights.

Rules:
- a unit's score is the norm over every producer slice in its group (conv/linear output
  rows and their biases); a unit fed by several producers (residual adds) gets the norm of
  all of them together;
- scores are aligned with `group.units`; frozen units are scored too (callers skip them);
- needs real weights: meta-device tensors raise PreconditionError.

Example:
    scores = am.get(MagnitudeImportance(norm=1))[group.index]
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from sparsec.errors import PreconditionError
from sparsec.ir import Graph
from sparsec.passes.analysis.dependency_groups import (
    DependencyGroup,
    DependencyGroups,
    DependencyInfo,
)
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["MagnitudeImportance"]


def _per_index_power(graph: Graph, target: str, axis: int, norm: int) -> np.ndarray:
    tensor = graph.tensor(target)
    if tensor.device.type == "meta":
        raise PreconditionError(
            f"magnitude-importance needs weight values, but @{target} is on the meta device; "
            "load real weights or use a criterion that needs none"
        )
    moved = tensor.detach().float().movedim(axis, 0).reshape(tensor.shape[axis], -1)
    values = moved.abs().sum(1) if norm == 1 else moved.pow(2).sum(1)
    return values.cpu().numpy().astype(np.float64)


def group_scores(graph: Graph, deps: DependencyInfo, group: DependencyGroup, norm: int) -> np.ndarray:
    """Score each unit of `group` by the norm of its producer weights."""
    totals = np.zeros(len(group.units))
    for param in group.params:
        if param.role != "producer":
            continue
        labels = deps.slot_units[param.slot]
        positions = np.searchsorted(group.units, labels)
        totals += np.bincount(
            positions,
            weights=_per_index_power(graph, param.target, param.axis, norm),
            minlength=len(group.units),
        )
    return totals if norm == 1 else np.sqrt(totals)


@register
@pass_dataclass
class MagnitudeImportance(Analysis):
    """Score every unit by the L1/L2 norm of its producing weights."""

    name: ClassVar[str] = "magnitude-importance"
    role: ClassVar[str | None] = "channel-importance"
    norm: Literal[1, 2] = 2

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        deps = am.get(DependencyGroups())
        return {g.index: group_scores(graph, deps, g, self.norm) for g in deps.groups}
