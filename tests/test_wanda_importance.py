"""wanda-importance: Σ_i |W_ij| · ‖X_j‖₂ over the consuming layer's input."""

from __future__ import annotations

import numpy as np
import torch
from _criteria_models import W1, W2, X, linear_pair
from models import make_grouped

from sparsec.calibration import Calibration
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, WandaImportance
from sparsec.pipeline import AnalysisManager


def test_weight_columns_times_input_norms() -> None:
    model, x = linear_pair(relu=True)
    graph = trace(model, (x,))
    batches = [X, X + 1.0]
    am = AnalysisManager(graph, Calibration(batches))
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    hidden = torch.relu(torch.cat(batches) @ W1.T)
    expected = (W2.abs().sum(0) * hidden.norm(dim=0)).numpy()
    np.testing.assert_allclose(am.get(WandaImportance())[group.index], expected, rtol=1e-6)


def test_grouped_conv_consumer_is_scored() -> None:
    model, x = make_grouped()
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration([x]))
    scores = am.get(WandaImportance())
    (stem,) = am.get(DependencyGroups()).group_of("stem.0")
    assert stem.index in scores and (scores[stem.index] >= 0).all()
