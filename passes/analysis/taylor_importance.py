"""First-order Taylor importance (Molchanov et al.): |w · ∂L/∂w| summed over each unit.

Rules:
- ∂L/∂w is summed over the calibration batches; needs `Calibration(loss_fn=...)` and
  raises PreconditionError naming the fix without it;
- with `scope="coupled"` (default) every coupled parameter counts: the producer rows, the
  BatchNorm affine parameters and the consumers' input columns, combined by `aggregate`.

Example:
    sparsec.compile(model, x, pipeline="taylor-50", calibration=Calibration(loader, loss_fn))
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from sparsec.ir import Graph
from sparsec.passes.analysis._gradient import gradient_scores
from sparsec.passes.analysis._scoring import Aggregate, Normalize, Scope
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["TaylorImportance"]


@register
@pass_dataclass
class TaylorImportance(Analysis):
    """Score units by the first-order change of the loss when their weights go to zero."""

    name: ClassVar[str] = "taylor-importance"
    role: ClassVar[str | None] = "channel-importance"
    aggregate: Aggregate = "sum"
    normalize: Normalize = "none"
    scope: Scope = "coupled"

    def run(self, graph: Graph, am: AnalysisManager) -> dict[int, np.ndarray]:
        return gradient_scores(
            graph,
            am,
            self.name,
            "sum",
            lambda w, g: (w * g).abs(),
            self.aggregate,
            self.normalize,
            self.scope,
        )
