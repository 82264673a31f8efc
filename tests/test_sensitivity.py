"""sensitivity: output deviation per group and ratio, and overrides for prune-channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _criteria_models import X, linear_pair
from models import make_mlp

from sparsec.calibration import Calibration
from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, Sensitivity
from sparsec.passes.rewrite import PruneChannels
from sparsec.pipeline import AnalysisManager, PassManager


def test_removing_a_dead_unit_costs_nothing() -> None:
    model, x = linear_pair(relu=False)
    with torch.no_grad():
        model.fc1.weight[1] = 0.0  # unit 1 is dead and scores lowest
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration([X]))
    result = am.get(Sensitivity(ratios=(0.34, 0.67)))
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    # 0.34 * 3 -> 1 unit (the dead one): exact; 0.67 * 3 -> 2 units: the output moves
    assert result.deviation[group.index][0] == pytest.approx(0.0, abs=1e-12)
    assert result.deviation[group.index][1] > 0.01
    assert result.ratio_within(1e-6) == {group.index: 0.34}
    assert result.overrides(1e-6) == (("fc1", 0.34),)
    assert graph.version == 0


def test_deviation_matches_pruning_the_graph() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration([x]))
    result = am.get(Sensitivity(ratios=(0.5,)))
    (fc1,) = am.get(DependencyGroups()).group_of("fc1")
    with torch.no_grad():
        reference = graph(x)
    PassManager([PruneChannels(ratio=0.0, overrides=(("fc1", 0.5),))]).run(graph, am)
    with torch.no_grad():
        pruned = graph(x)
    expected = float((pruned - reference).square().sum() / reference.square().sum())
    assert result.deviation[fc1.index][0] == pytest.approx(expected, rel=1e-4)


def test_overrides_feed_prune_channels() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    am = AnalysisManager(graph, Calibration([x]))
    overrides = am.get(Sensitivity(ratios=(0.25, 0.5))).overrides(budget=np.inf)
    assert dict(overrides) == {"fc1": 0.5, "fc2": 0.5}
    PassManager([PruneChannels(ratio=0.1, overrides=(("fc1", 0.25),))]).run(graph, am)
    assert graph.tensor("fc1.weight").shape[0] == 24  # 32 - floor(0.25 * 32)
    assert graph.tensor("fc2.weight").shape[0] == 29  # 32 - floor(0.1 * 32)


def test_loss_metric_needs_a_loss() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    with pytest.raises(PreconditionError, match="loss"):
        AnalysisManager(graph, Calibration([X])).get(Sensitivity(metric="loss"))
    calibration = Calibration([X], loss_fn=lambda outputs, batch: outputs.square().mean())
    result = AnalysisManager(graph, calibration).get(Sensitivity(metric="loss", ratios=(0.5,)))
    assert all(np.isfinite(d).all() for d in result.deviation.values())
