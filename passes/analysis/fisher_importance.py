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

import torch

from sparsec.passes.analysis._gradient import GradientImportance
from sparsec.pipeline import pass_dataclass, register

__all__ = ["FisherImportance"]


@register
@pass_dataclass
class FisherImportance(GradientImportance):
    """Score units by the OBD saliency with squared gradients as the Hessian diagonal."""

    name: ClassVar[str] = "fisher-importance"
    mode = "square"

    @staticmethod
    def element(weight: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
        return 0.5 * fisher * weight * weight
