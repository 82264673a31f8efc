"""LAMP importance (Lee et al. 2021): a unit's squared norm over the squared norms of every
unit of its group that is at least as large.

Rules:
- per unit u with squared norm s_u (producer weights, summed over coupled producers), the
  score is s_u / sum(s_v for v with s_v >= s_u); ties share the same denominator;
- the largest unit of every group scores 1, so groups are comparable without normalising:
  the criterion for `prune-channels{allocation=global}`.

Example:
    squared norms [1, 2, 3, 4] -> scores [1/10, 2/9, 3/7, 4/4]
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.ir import Graph
from sparsec.passes.analysis._scoring import Scope
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.magnitude_importance import group_scores
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["LAMPImportance", "lamp_scores"]


def lamp_scores(squared: np.ndarray) -> np.ndarray:
    """LAMP scores of squared norms (see module docstring)."""
    order = np.argsort(squared, kind="stable")
    ascending = squared[order]
    # sum of every value >= ascending[i], ties included
    suffix = np.cumsum(ascending[::-1])[::-1]
    first_of_tie = np.searchsorted(ascending, ascending, side="left")
    denominators = suffix[first_of_tie]
    scores = np.empty_like(squared, dtype=np.float64)
    scores[order] = np.divide(
        ascending, denominators, out=np.zeros(len(ascending)), where=denominators > 0
    )
    return scores


@register
@pass_dataclass
class LAMPImportance(Analysis):
    """Score units by layer-adaptive magnitude (see module docstring)."""

    name: ClassVar[str] = "lamp-importance"
    role: ClassVar[str | None] = "channel-importance"
    scope: Scope = "producers"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        deps = am.get(DependencyGroups())
        return {
            g.index: lamp_scores(group_scores(graph, deps, g, 2, "sum", self.scope) ** 2)
            for g in deps.groups
        }
