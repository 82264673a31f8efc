"""Shared by the gradient criteria (Taylor, Fisher): stream gradients, then score per unit.

Rules:
- a criterion subclasses `GradientImportance`: its options are `aggregate`, `normalize`
  and `scope`; it names how batch gradients are summed (`mode`) and its `element`;
- gradients of every tensor the criterion reads are summed over the calibration batches
  (one batch in memory at a time); the graph's parameters and `.grad` are left alone;
- `element` turns (weight, gradient sum) into a per-element saliency, summed per index of
  the tensor's unit axis, onto units, then aggregated and normalised like every criterion.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import numpy as np
import torch

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._scoring import (
    Aggregate,
    Normalize,
    Scope,
    aggregate,
    normalize,
    to_units,
)
from sparsec.passes.analysis._streaming import accumulate_gradients
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.magnitude_importance import weight_slices
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass

__all__ = ["GradientImportance"]


@pass_dataclass
class GradientImportance(Analysis):
    """Base of the gradient criteria: per group, aggregated, normalised sums of
    `element(w, g)` over each unit's slices."""

    role: ClassVar[str | None] = "channel-importance"
    mode: ClassVar[Literal["sum", "square"]]  # how batch gradients are summed
    aggregate: Aggregate = "sum"
    normalize: Normalize = "none"
    scope: Scope = "coupled"

    @staticmethod
    @abstractmethod
    def element(weight: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The per-element saliency of `weight` from its summed batch `gradients`."""

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        calibration = require_calibration(am.calibration, self.name)
        deps = am.get(DependencyGroups())
        slices = {g.index: weight_slices(g, self.scope) for g in deps.groups}
        targets = {p.target for params in slices.values() for p in params}
        grads = accumulate_gradients(graph, calibration, sorted(targets), self.mode, self.name)
        scores: dict[int, np.ndarray] = {}
        for group in deps.groups:
            parts = []
            for p in slices[group.index]:
                if p.target not in grads:
                    continue
                weight = graph.tensor(p.target).detach().double()
                saliency = self.element(weight, grads[p.target]).movedim(p.axis, 0)
                values = saliency.reshape(weight.shape[p.axis], -1).sum(1).cpu().numpy()
                parts.append(to_units(deps, group, p.slot, values))
            units = len(group.units)
            scores[group.index] = normalize(aggregate(parts, self.aggregate, units), self.normalize)
        return scores
