"""bn-scale-importance: |γ| per channel; groups without BatchNorm are not scored."""

from __future__ import annotations

import numpy as np
import torch
from _criteria_models import linear_pair
from models import make_cnn_chain, make_residual

from sparsec.frontends import trace
from sparsec.passes.analysis import BNScaleImportance, DependencyGroups
from sparsec.passes.rewrite import PruneChannels
from sparsec.pipeline import AnalysisManager, PassManager


def test_scores_are_abs_gamma() -> None:
    model, x = make_cnn_chain()
    with torch.no_grad():
        model.b1.weight.copy_(torch.tensor([1.0, -5.0, 0.1, 2.0, -0.2, 3.0, 0.0, 4.0]))
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    (group,) = am.get(DependencyGroups()).group_of("c1")
    np.testing.assert_allclose(
        am.get(BNScaleImportance())[group.index], model.b1.weight.detach().abs().numpy()
    )


def test_residual_stream_aggregates_its_batch_norms() -> None:
    model, x = make_residual()
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    (group,) = am.get(DependencyGroups()).group_of("c2")
    gammas = model.stem[1].weight.abs(), model.b2.weight.abs()
    got = am.get(BNScaleImportance(aggregate="max"))[group.index]
    np.testing.assert_allclose(got, torch.maximum(*gammas).detach().numpy())


def test_group_without_batch_norm_is_unscored_and_kept_whole() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    assert am.get(BNScaleImportance()) == {}
    run = PassManager([BNScaleImportance(), PruneChannels(ratio=0.5)]).run(graph, am)
    (_, result) = run.results[-1]
    assert result is not None and not result.changed
    assert any(
        row["frozen"] == "not scored by bn-scale-importance" for row in result.summary.groups
    )
