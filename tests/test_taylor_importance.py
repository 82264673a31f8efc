"""taylor-importance: |w · ∂L/∂w| with gradients worked out by hand for a linear pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _criteria_models import W1, W2, X, linear_pair

from sparsec.calibration import Calibration
from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, TaylorImportance
from sparsec.pipeline import AnalysisManager


def _sum_loss(outputs: torch.Tensor, batch: object) -> torch.Tensor:
    return outputs.sum()


def _run(analysis: TaylorImportance, batches: list[torch.Tensor]) -> np.ndarray:
    model, x = linear_pair(relu=False)
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration(batches, loss_fn=_sum_loss))
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    scores = am.get(analysis)[group.index]
    assert graph.module.fc1.weight.grad is None  # gradients never land on the graph
    return scores


def _hand_gradients(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # L = Σ W2 W1 x: dL/dW1[i, j] = (Σ_o W2[o, i]) Σ_b x[b, j]; dL/dW2[o, i] = Σ_b (W1 x_b)[i]
    s = sum(b.sum(0) for b in batches)
    g1 = W2.sum(0)[:, None] * s[None, :]
    g2 = (W1 @ s)[None, :].expand_as(W2)
    return g1, g2


def test_producer_scope_matches_hand_gradients() -> None:
    batches = [X, X * 0.5 + 1]
    g1, _ = _hand_gradients(batches)
    expected = (W1 * g1).abs().sum(1).numpy()
    np.testing.assert_allclose(
        _run(TaylorImportance(scope="producers"), batches), expected, rtol=1e-5
    )


def test_coupled_scope_adds_consumer_columns() -> None:
    batches = [X]
    g1, g2 = _hand_gradients(batches)
    expected = (W1 * g1).abs().sum(1) + (W2 * g2).abs().sum(0)
    np.testing.assert_allclose(_run(TaylorImportance(), batches), expected.numpy(), rtol=1e-5)


def test_needs_a_loss_and_data() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    with pytest.raises(PreconditionError, match="loss_fn"):
        AnalysisManager(graph, Calibration([x])).get(TaylorImportance())
    with pytest.raises(PreconditionError, match="calibration"):
        AnalysisManager(graph).get(TaylorImportance())


def test_labels_reach_the_loss_through_inputs() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    labels = torch.tensor([0, 1, 1, 0])
    seen: list[torch.Tensor] = []

    def loss(outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seen.append(batch[1])
        return torch.nn.functional.cross_entropy(outputs, batch[1])

    calibration = Calibration([(x, labels)], loss_fn=loss, inputs=lambda b: b[0])
    AnalysisManager(graph, calibration).get(TaylorImportance())
    assert len(seen) == 1 and torch.equal(seen[0], labels)
