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

import torch

from sparsec.passes.analysis._gradient import GradientImportance
from sparsec.pipeline import pass_dataclass, register

__all__ = ["TaylorImportance"]


@register
@pass_dataclass
class TaylorImportance(GradientImportance):
    """Score units by the first-order change of the loss when their weights go to zero."""

    name: ClassVar[str] = "taylor-importance"
    mode = "sum"

    @staticmethod
    def element(weight: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (weight * gradients).abs()
