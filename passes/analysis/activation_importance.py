"""Activation importance: how strongly a channel fires where the next layer reads it.

Rules:
- statistics are taken on the inputs of the conv/linear layers that consume the group's
  channels (after BatchNorm and activation), streamed over the calibration data;
- `statistic="mean-abs"` scores the mean |x| of the channel; `"apoz"` scores 1 - APoZ
  (the average percentage of zeros, Hu et al. 2016), so a channel that is mostly zero after
  its ReLU scores low;
- several consuming values in one group combine by `aggregate`; a group that no layer
  consumes (the model output) gets no score.

Example:
    pipeline(activation-importance{statistic=apoz},prune-channels{ratio=0.5})
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._scoring import Aggregate, Normalize, aggregate, normalize, to_units
from sparsec.passes.analysis._streaming import channel_stats, consumer_inputs
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["ActivationImportance"]


@register
@pass_dataclass
class ActivationImportance(Analysis):
    """Score channels by their activations on calibration data (see module docstring)."""

    name: ClassVar[str] = "activation-importance"
    role: ClassVar[str | None] = "channel-importance"
    statistic: Literal["mean-abs", "apoz"] = "mean-abs"
    aggregate: Aggregate = "mean"
    normalize: Normalize = "none"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        calibration = require_calibration(am.calibration, self.name)
        deps = am.get(DependencyGroups())
        slots: dict[int, list[tuple[str, int]]] = {}
        for consumer in consumer_inputs(graph, deps):
            if consumer.slot not in slots.setdefault(consumer.group, []):
                slots[consumer.group].append(consumer.slot)
        stats = channel_stats(graph, calibration, [s for group in slots.values() for s in group])
        scores: dict[int, np.ndarray] = {}
        for group in deps.groups:
            parts = []
            for slot in slots.get(group.index, []):
                entry = stats[slot]
                count = max(entry.count, 1)
                if self.statistic == "mean-abs":
                    values = entry.abs_sum / count
                else:
                    values = 1.0 - entry.zeros / count
                parts.append(to_units(deps, group, slot, values.numpy()))
            if parts:
                scores[group.index] = normalize(
                    aggregate(parts, self.aggregate, len(group.units)), self.normalize
                )
        return scores
