"""Structured channel pruning: remove the lowest-scoring units of every dependency group.

Rules:
- per group, `floor(ratio * prunable units)` units go, never leaving fewer than
  `min_channels` units; frozen units (model inputs/outputs, ops without rules) stay;
- a group any of whose parameters matches an `ignore` glob is left whole;
- scores come from the pipeline's chosen "channel-importance" analysis (default: L2
  magnitude); the removal itself is shared with every structured rewrite (shrink.py).

Example:
    pipeline(magnitude-importance{norm=1},prune-channels{ratio=0.5,ignore=[fc.*]})
"""

from __future__ import annotations

import fnmatch
import math
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field

from sparsec.ir import Graph
from sparsec.passes.analysis.dependency_groups import DependencyGroup, DependencyGroups
from sparsec.passes.analysis.magnitude_importance import MagnitudeImportance
from sparsec.passes.rewrite.shrink import remove_units
from sparsec.pipeline import AnalysisManager, PassResult, RewritePass, pass_dataclass, register

__all__ = ["PruneChannels"]


@register
@pass_dataclass
class PruneChannels(RewritePass):
    """Remove a fraction of every group's channels, lowest importance first."""

    name: ClassVar[str] = "prune-channels"
    ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    min_channels: Annotated[int, Field(ge=1)] = 1
    ignore: tuple[str, ...] = ()

    def _ignored(self, group: DependencyGroup) -> bool:
        return any(
            fnmatch.fnmatch(p.target, pattern) or fnmatch.fnmatch(p.layer, pattern)
            for p in group.params
            for pattern in self.ignore
        )

    def choose(self, group: DependencyGroup, scores: np.ndarray) -> np.ndarray:
        """The units of `group` to remove, lowest score first."""
        candidates = group.prunable_units
        count = min(math.floor(self.ratio * len(candidates)), len(group.units) - self.min_channels)
        if count <= 0 or self._ignored(group):
            return np.zeros(0, dtype=np.int64)
        candidate_scores = scores[np.searchsorted(group.units, candidates)]
        order = np.argsort(candidate_scores, kind="stable")
        return np.sort(candidates[order[:count]])

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        deps = am.get(DependencyGroups())
        scores = am.get(am.provider("channel-importance", MagnitudeImportance()))
        removed: list[np.ndarray] = []
        rows: list[dict[str, object]] = []
        for group in deps.groups:
            chosen = self.choose(group, scores[group.index])
            removed.append(chosen)
            rows.append(
                {
                    "index": group.index,
                    "layers": ", ".join(group.layers),
                    "before": len(group.units),
                    "after": len(group.units) - len(chosen),
                    "frozen": "ignored" if self._ignored(group) else next(iter(group.frozen_units.values()), ""),
                }
            )
        all_removed = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        remove_units(graph, deps, all_removed, self.name)
        return PassResult(changed=len(all_removed) > 0, summary={"groups": rows})
