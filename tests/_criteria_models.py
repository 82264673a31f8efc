"""Hand-built models with known importance scores, shared by the criterion tests.

Rules:
- weights are set by hand (no random init), so every expected score is computed in the test
  from the same numbers with numpy;
- `LinearPair` is fc1 (no bias) -> optional relu -> fc2 (no bias): one prunable group, the 3
  hidden units; fc2's outputs are the model output (frozen).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["W1", "W2", "X", "LinearPair", "linear_pair"]

W1 = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]])
W2 = torch.tensor([[2.0, -1.0, 0.5], [1.0, 1.0, -1.0]])
X = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [2.0, -1.0], [0.5, 0.5]])


class LinearPair(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.fc2 = nn.Linear(3, 2, bias=False)
        self.relu = relu
        with torch.no_grad():
            self.fc1.weight.copy_(W1)
            self.fc2.weight.copy_(W2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.relu(h) if self.relu else h)


def linear_pair(relu: bool = True) -> tuple[nn.Module, torch.Tensor]:
    return LinearPair(relu).eval(), X
