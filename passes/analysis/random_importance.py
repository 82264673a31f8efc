"""Random importance: a seeded baseline every other criterion must beat.

Rules:
- scores are uniform in [0, 1), drawn per group from a generator seeded by (`seed`, group
  index), so the same seed gives the same choice on every run and every machine.

Example:
    pipeline(random-importance{seed=3},prune-channels{ratio=0.5})
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field

from sparsec.ir import Graph
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["RandomImportance"]


@register
@pass_dataclass
class RandomImportance(Analysis):
    """Score every unit at random, reproducibly."""

    name: ClassVar[str] = "random-importance"
    role: ClassVar[str | None] = "channel-importance"
    seed: Annotated[int, Field(ge=0)] = 0

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        deps = am.get(DependencyGroups())
        return {
            g.index: np.random.default_rng([self.seed, g.index]).random(len(g.units))
            for g in deps.groups
        }
