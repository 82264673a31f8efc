"""lamp-importance: s_u / Σ_{s_v >= s_u} s_v on squared norms."""

from __future__ import annotations

import numpy as np
from _criteria_models import W1, linear_pair

from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, LAMPImportance
from sparsec.passes.analysis.lamp_importance import lamp_scores
from sparsec.pipeline import AnalysisManager


def test_known_values() -> None:
    np.testing.assert_allclose(
        lamp_scores(np.array([3.0, 1.0, 4.0, 2.0])), [3 / 7, 1 / 10, 1.0, 2 / 9]
    )


def test_ties_share_a_denominator() -> None:
    np.testing.assert_allclose(lamp_scores(np.array([2.0, 2.0, 1.0])), [2 / 4, 2 / 4, 1 / 5])


def test_all_zero_group_scores_zero() -> None:
    np.testing.assert_allclose(lamp_scores(np.zeros(3)), np.zeros(3))


def test_on_a_graph_the_largest_unit_scores_one() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    squared = W1.square().sum(1).numpy().astype(np.float64)
    np.testing.assert_allclose(
        am.get(LAMPImportance())[group.index], lamp_scores(squared), rtol=1e-6
    )
    assert am.get(LAMPImportance())[group.index].max() == 1.0
