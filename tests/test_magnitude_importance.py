"""magnitude-importance and the shared aggregation/normalisation, on hand-built weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _criteria_models import W1, W2, linear_pair
from models import make_residual

from sparsec.errors import PassOptionError
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups, MagnitudeImportance
from sparsec.passes.analysis._scoring import UnitValues, aggregate, normalize
from sparsec.pipeline import AnalysisManager


def _scores(analysis: MagnitudeImportance) -> np.ndarray:
    model, x = linear_pair()
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    (group,) = [g for g in am.get(DependencyGroups()).groups if g.layers == ["fc1"]]
    return am.get(analysis)[group.index]


def test_l1_and_l2_of_producer_rows() -> None:
    np.testing.assert_allclose(_scores(MagnitudeImportance(norm=1)), W1.abs().sum(1).numpy())
    np.testing.assert_allclose(
        _scores(MagnitudeImportance(norm=2)), W1.norm(dim=1).numpy(), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("how", "combine"),
    [
        ("sum", np.add),
        ("max", np.maximum),
        ("product", np.multiply),
        ("mean", lambda a, b: (a + b) / 2),
    ],
)
def test_coupled_scope_aggregates_producer_and_consumer(how: str, combine: object) -> None:
    rows, columns = W1.abs().sum(1).numpy(), W2.abs().sum(0).numpy()
    got = _scores(MagnitudeImportance(norm=1, scope="coupled", aggregate=how))  # type: ignore[arg-type]
    np.testing.assert_allclose(got, combine(rows, columns))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("none", [1.0, 2.0, 3.0]),
        ("mean", [0.5, 1.0, 1.5]),
        ("max", [1 / 3, 2 / 3, 1.0]),
        ("sum", [1 / 6, 2 / 6, 3 / 6]),
        ("standardize", [-1.224745, 0.0, 1.224745]),
    ],
)
def test_normalize(how: str, expected: list[float]) -> None:
    np.testing.assert_allclose(normalize(np.array([1.0, 2.0, 3.0]), how), expected, rtol=1e-5)  # type: ignore[arg-type]


def test_aggregate_skips_tensors_that_do_not_touch_a_unit() -> None:
    # a `cat`: the first tensor covers units 0-1, the second units 1-2
    a = UnitValues(np.array([2.0, 3.0, 0.0]), np.array([True, True, False]))
    b = UnitValues(np.array([0.0, 5.0, 7.0]), np.array([False, True, True]))
    np.testing.assert_allclose(aggregate([a, b], "mean", 3), [2.0, 4.0, 7.0])
    np.testing.assert_allclose(aggregate([a, b], "product", 3), [2.0, 15.0, 7.0])
    np.testing.assert_allclose(aggregate([a, b], "max", 3), [2.0, 5.0, 7.0])
    np.testing.assert_allclose(aggregate([], "sum", 2), [0.0, 0.0])


def test_residual_group_sums_every_producer() -> None:
    model, x = make_residual()
    graph = trace(model, (x,))
    am = AnalysisManager(graph)
    (group,) = am.get(DependencyGroups()).group_of("c2")
    expected = model.stem[0].weight.abs().sum((1, 2, 3)) + model.c2.weight.abs().sum((1, 2, 3))
    np.testing.assert_allclose(
        am.get(MagnitudeImportance(norm=1))[group.index], expected.detach().numpy(), rtol=1e-5
    )


def test_analysis_does_not_touch_the_graph() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    text = str(graph)
    AnalysisManager(graph).get(MagnitudeImportance(scope="coupled", normalize="max"))
    assert str(graph) == text and graph.version == 0
    torch.testing.assert_close(graph.tensor("fc1.weight"), W1)


def test_options_are_validated() -> None:
    with pytest.raises(PassOptionError):
        MagnitudeImportance(aggregate="median")  # type: ignore[arg-type]
    with pytest.raises(PassOptionError):
        MagnitudeImportance(norm=3)  # type: ignore[arg-type]
