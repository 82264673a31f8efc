"""activation-importance: mean |x| and 1 - APoZ of the values consumer layers read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _criteria_models import W1, X, linear_pair

from sparsec.calibration import Calibration
from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.passes.analysis import ActivationImportance, DependencyGroups
from sparsec.pipeline import AnalysisManager

BATCHES = [X, X.flip(0) * 2.0]


def _scores(analysis: ActivationImportance) -> np.ndarray:
    model, x = linear_pair(relu=True)
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration(BATCHES, max_batches=2))
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    return am.get(analysis)[group.index]


def _hidden() -> torch.Tensor:
    return torch.relu(torch.cat(BATCHES) @ W1.T)


def test_mean_abs_activation() -> None:
    expected = _hidden().abs().mean(0).numpy()
    np.testing.assert_allclose(_scores(ActivationImportance()), expected, rtol=1e-6)


def test_apoz() -> None:
    expected = 1.0 - (_hidden() == 0).float().mean(0).numpy()
    np.testing.assert_allclose(_scores(ActivationImportance(statistic="apoz")), expected)


def test_output_group_gets_no_score_and_data_is_required() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration([x]))
    (out,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc2"]]
    assert out.index not in am.get(ActivationImportance())
    with pytest.raises(PreconditionError, match="calibration"):
        AnalysisManager(graph).get(ActivationImportance())
