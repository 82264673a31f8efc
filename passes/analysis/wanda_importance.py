"""Wanda importance (Sun et al. 2023), structured: Σ_i |W_ij| · ‖X_j‖₂ per input channel j.

Rules:
- for every conv/linear layer that consumes the group's channels, X is that layer's input
  on the calibration data; ‖X_j‖₂ is streamed as a running sum of squares over batch and
  spatial positions, |W_ij| is summed over output channels (and kernel positions);
- a grouped conv's weight columns are matched to input channels modulo the group width;
- several consumers of one group combine by `aggregate`; an unconsumed group gets no score.

Example:
    pipeline(wanda-importance{normalize=mean},prune-channels{ratio=0.5,allocation=global})
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._scoring import (
    Aggregate,
    Normalize,
    UnitValues,
    aggregate,
    normalize,
    to_units,
)
from sparsec.passes.analysis._streaming import channel_stats, consumer_inputs
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.magnitude_importance import per_index
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["WandaImportance"]


@register
@pass_dataclass
class WandaImportance(Analysis):
    """Score input channels by weight magnitude times input activation norm."""

    name: ClassVar[str] = "wanda-importance"
    role: ClassVar[str | None] = "channel-importance"
    aggregate: Aggregate = "sum"
    normalize: Normalize = "none"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        calibration = require_calibration(am.calibration, self.name)
        deps = am.get(DependencyGroups())
        consumers = consumer_inputs(graph, deps)
        stats = channel_stats(graph, calibration, [c.slot for c in consumers])
        parts: dict[int, list[UnitValues]] = {}
        for consumer in consumers:
            columns = per_index(graph, consumer.weight, 1, 1, self.name)
            norms = np.sqrt(stats[consumer.slot].square_sum.numpy())
            weights = columns[np.arange(len(norms)) % len(columns)]
            group = deps.groups[consumer.group]
            parts.setdefault(group.index, []).append(
                to_units(deps, group, consumer.slot, weights * norms)
            )
        return {
            index: normalize(
                aggregate(p, self.aggregate, len(deps.groups[index].units)), self.normalize
            )
            for index, p in parts.items()
        }
