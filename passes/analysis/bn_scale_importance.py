"""BN-scale importance (network slimming): |γ| of the BatchNorm scale of each channel.

Rules:
- reads the weight (γ) of every `aten.batch_norm` in the group; a group with several
  (a residual stream) combines them by `aggregate`, then `normalize` rescales the group;
- a group with no BatchNorm gets no score: it is absent from the result and prune-channels
  leaves it whole, saying so in its summary (no silent fallback to another criterion).

Example:
    pipeline(bn-scale-importance{normalize=mean},prune-channels{ratio=0.3,allocation=global})
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.fx as fx

from sparsec.ir import Graph
from sparsec.passes.analysis._scoring import Aggregate, Normalize, aggregate, normalize, to_units
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.magnitude_importance import per_index
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["BNScaleImportance"]

_BATCH_NORMS = (
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
)


@register
@pass_dataclass
class BNScaleImportance(Analysis):
    """Score every channel by |γ| of the BatchNorm that scales it."""

    name: ClassVar[str] = "bn-scale-importance"
    role: ClassVar[str | None] = "channel-importance"
    aggregate: Aggregate = "sum"
    normalize: Normalize = "none"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        deps = am.get(DependencyGroups())
        scales = {
            n.args[1].name
            for n in graph.nodes
            if n.target in _BATCH_NORMS and len(n.args) > 1 and isinstance(n.args[1], fx.Node)
        }
        scores: dict[int, np.ndarray] = {}
        for group in deps.groups:
            parts = [
                to_units(deps, group, p.slot, per_index(graph, p.target, p.axis, 1, self.name))
                for p in group.params
                if p.role == "norm" and p.node in scales
            ]
            if parts:
                scores[group.index] = normalize(
                    aggregate(parts, self.aggregate, len(group.units)), self.normalize
                )
        return scores
