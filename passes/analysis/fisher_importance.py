"""Fisher / OBD importance: ½ · F · w² with the Fisher diagonal F = Σ (∂L/∂w)² as the
Hessian diagonal (LeCun's Optimal Brain Damage), summed over each unit.

Rules:
- F is the sum over calibration batches of the squared batch gradient; needs
  `Calibration(loss_fn=...)` and raises PreconditionError naming the fix without it;
- unlike Taylor, the score does not vanish at a minimum where the mean gradient is zero;
- `scope`, `aggregate` and `normalize` work as for every criterion.

Example:
    pipeline(fisher-importance{normalize=mean},prune-channels{ratio=0.5,target=macs})
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.ir import Graph
from sparsec.passes.analysis._gradient import gradient_scores
from sparsec.passes.analysis._scoring import Aggregate, Normalize, Scope
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["FisherImportance"]


@register
@pass_dataclass
class FisherImportance(Analysis):
    """Score units by the OBD saliency with squared gradients as the Hessian diagonal."""

    name: ClassVar[str] = "fisher-importance"
    role: ClassVar[str | None] = "channel-importance"
    aggregate: Aggregate = "sum"
    normalize: Normalize = "none"
    scope: Scope = "coupled"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        return gradient_scores(
            graph,
            am,
            self.name,
            "square",
            lambda w, f: 0.5 * f * w * w,
            self.aggregate,
            self.normalize,
            self.scope,
        )
