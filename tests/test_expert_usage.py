"""`expert-usage`: per-expert selection frequency and gate mass, streamed at each router's topk.

Counted by hand on a plain-torch MoE (models.TinyMoE) and compared; a dense model has no
MoE layer and needs no calibration data.
"""

from __future__ import annotations

import torch
from models import TinyMoE
from torch import nn

from sparsec.calibration import Calibration
from sparsec.frontends import trace
from sparsec.passes.analysis import ExpertUsage
from sparsec.pipeline import AnalysisManager


def _tokens(n: int = 16) -> list[tuple[torch.Tensor]]:
    return [(torch.randn(n, 8, generator=torch.Generator().manual_seed(i)),) for i in range(2)]


def test_expert_usage_counts_choices_and_gate_mass() -> None:
    model = TinyMoE().eval()
    graph = trace(model, (torch.randn(5, 8),))
    (layer,) = AnalysisManager(graph, Calibration(_tokens())).get(ExpertUsage())
    assert (layer.layer, layer.router, layer.experts, layer.top_k, layer.tokens) == ("gate", "gate", 4, 2, 32)
    chosen, mass = torch.zeros(4), torch.zeros(4)
    for (x,) in _tokens():
        probs = torch.softmax(model.gate(x), -1)
        top, ids = probs.topk(2, -1)
        chosen += torch.bincount(ids.flatten(), minlength=4)
        mass.index_add_(0, ids.flatten(), top.flatten())
    assert layer.frequency is not None and layer.gate_mass is not None
    assert torch.allclose(torch.from_numpy(layer.frequency).float(), chosen / 32)
    assert torch.allclose(torch.from_numpy(layer.gate_mass).float(), mass.detach() / 32, atol=1e-6)
    assert abs(layer.frequency.sum() - 2) < 1e-9


def test_a_model_without_experts_has_no_moe_layer() -> None:
    graph = trace(nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval(), (torch.randn(2, 8),))
    assert AnalysisManager(graph).get(ExpertUsage()) == []


def _without_expert(model: TinyMoE, expert: int) -> TinyMoE:
    """TinyMoE with one expert fewer: its router row and expert weights deleted."""
    kept = [e for e in range(4) if e != expert]
    smaller = TinyMoE(experts=3).eval()
    with torch.no_grad():
        smaller.gate.weight.copy_(model.gate.weight[kept])
        smaller.up.copy_(model.up[kept])
        smaller.down.copy_(model.down[kept])
    return smaller


def test_output_error_is_the_output_change_of_removing_each_expert() -> None:
    model = TinyMoE().eval()
    graph = trace(model, (torch.randn(5, 8),))
    (layer,) = AnalysisManager(graph, Calibration(_tokens())).get(ExpertUsage(output_error=True))
    expected = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for (x,) in _tokens():
            for e in range(4):
                expected[e] += (_without_expert(model, e)(x) - model(x)).double().square().mean() / 2
    assert layer.output_error is not None
    torch.testing.assert_close(torch.from_numpy(layer.output_error), expected, rtol=1e-4, atol=1e-9)
    assert (expected > 0).all()
