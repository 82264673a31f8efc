"""fisher-importance: ½ Σ_batches g² · w², checked against hand-computed gradients."""

from __future__ import annotations

import numpy as np
import torch
from _criteria_models import W1, W2, X, linear_pair

from sparsec.calibration import Calibration
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, FisherImportance
from sparsec.pipeline import AnalysisManager


def test_squared_batch_gradients_times_squared_weights() -> None:
    model, x = linear_pair(relu=False)
    graph = trace(model, (x,))
    batches = [X, -X + 0.25]
    calibration = Calibration(batches, loss_fn=lambda outputs, batch: outputs.sum())
    am = AnalysisManager(graph, calibration)
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    # per batch: dL/dW1[i, j] = (Σ_o W2[o, i]) Σ_b x[b, j]
    fisher = sum((W2.sum(0)[:, None] * b.sum(0)[None, :]) ** 2 for b in batches)
    expected = (0.5 * fisher * W1**2).sum(1).numpy()
    got = am.get(FisherImportance(scope="producers"))[group.index]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_does_not_vanish_where_batch_gradients_cancel() -> None:
    # two batches whose gradients cancel: Taylor's summed gradient is 0, Fisher is not
    model, x = linear_pair(relu=False)
    graph = trace(model, (x,))
    calibration = Calibration([X, -X], loss_fn=lambda outputs, batch: outputs.sum())
    am = AnalysisManager(graph, calibration)
    scores = am.get(FisherImportance())
    assert all((s > 0).any() for s in scores.values())
    assert torch.all(graph.tensor("fc1.weight") == W1)
