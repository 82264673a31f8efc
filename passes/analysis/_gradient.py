"""Shared by the gradient criteria (Taylor, Fisher): stream gradients, then score per unit.

Rules:
- gradients of every tensor the criterion reads are summed over the calibration batches
  (one batch in memory at a time); the graph's parameters and `.grad` are left alone;
- `element` turns (weight, gradient sum) into a per-element saliency, summed per index of
  the tensor's unit axis, onto units, then aggregated and normalised like every criterion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
from sparsec.pipeline import AnalysisManager

__all__ = ["gradient_scores"]

Element = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradient_scores(
    graph: Graph,
    am: AnalysisManager,
    who: str,
    mode: Literal["sum", "square"],
    element: Element,
    how: Aggregate,
    norm: Normalize,
    scope: Scope,
) -> dict[int, np.ndarray]:
    """Per group: aggregated, normalised sums of `element(w, g)` over each unit's slices."""
    calibration = require_calibration(am.calibration, who)
    deps = am.get(DependencyGroups())
    slices = {g.index: weight_slices(g, scope) for g in deps.groups}
    targets = {p.target for params in slices.values() for p in params}
    grads = accumulate_gradients(graph, calibration, sorted(targets), mode, who)
    scores: dict[int, np.ndarray] = {}
    for group in deps.groups:
        parts = []
        for p in slices[group.index]:
            if p.target not in grads:
                continue
            weight = graph.tensor(p.target).detach().double()
            saliency = element(weight, grads[p.target]).movedim(p.axis, 0)
            values = saliency.reshape(weight.shape[p.axis], -1).sum(1).cpu().numpy()
            parts.append(to_units(deps, group, p.slot, values))
        scores[group.index] = normalize(aggregate(parts, how, len(group.units)), norm)
    return scores
