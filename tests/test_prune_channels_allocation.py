"""prune-channels allocation (targets, global ranking, limits) and least-squares reconstruction."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from models import make_cnn_chain, make_mlp, make_residual
from torch import nn

from sparsec.calibration import Calibration
from sparsec.errors import PassOptionError, PreconditionError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.metrics import count_macs
from sparsec.passes.analysis import LAMPImportance, MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels
from sparsec.pipeline import AnalysisManager, Pass, PassManager, PassResult, VerifyEach


def _prune(graph: Graph, passes: list[Pass], calibration: Calibration | None = None) -> PassResult:
    run = PassManager(passes, instruments=[VerifyEach()]).run(
        graph, AnalysisManager(graph, calibration)
    )
    result = run.results[-1][1]
    assert result is not None
    return result


class Wide(nn.Module):
    """An MLP wide enough (64 units per group) for ratios to land within 2%."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(24, 64), nn.Linear(64, 96), nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _wide() -> Graph:
    torch.manual_seed(0)
    return trace(Wide().eval(), (torch.randn(2, 24),))


@pytest.mark.parametrize("allocation", ["local", "global"])
@pytest.mark.parametrize("kind", ["params", "macs"])
def test_targets_land_within_two_percent(allocation: str, kind: str) -> None:
    graph = _wide()
    params, macs = graph.num_parameters(), count_macs(graph)
    result = _prune(
        graph, [LAMPImportance(), PruneChannels(ratio=0.4, target=kind, allocation=allocation)]
    )  # type: ignore[arg-type]
    target = result.summary.target
    measured = 1 - (
        graph.num_parameters() / params if kind == "params" else count_macs(graph) / macs
    )
    assert target["achieved"] == pytest.approx(measured, abs=1e-4)
    assert target["estimated"] == pytest.approx(measured, abs=1e-4)  # the cost model is exact here
    assert abs(measured - 0.4) <= 0.02 and target["within_tolerance"]


def test_global_ranking_takes_the_weakest_units_anywhere() -> None:
    graph = _wide()
    with torch.no_grad():
        graph.module.fc1.weight.mul_(0.01)  # every fc1 unit is weaker than any fc2 unit
    _prune(graph, [PruneChannels(ratio=0.3, allocation="global", target="channels", max_ratio=1.0)])
    # 0.3 * 160 = 48 units, all from fc1
    assert graph.tensor("fc1.weight").shape[0] == 64 - 48
    assert graph.tensor("fc2.weight").shape[0] == 96


def test_max_ratio_caps_each_group() -> None:
    graph = _wide()
    with torch.no_grad():
        graph.module.fc1.weight.mul_(0.01)
    result = _prune(graph, [PruneChannels(ratio=0.5, allocation="global", max_ratio=0.5)])
    assert graph.tensor("fc1.weight").shape[0] == 32  # capped at half, the rest from fc2
    assert graph.tensor("fc2.weight").shape[0] == 96 - 48
    assert result.summary.target["within_tolerance"]


def test_round_to_keeps_multiples() -> None:
    graph = _wide()
    _prune(graph, [PruneChannels(ratio=0.3, target="macs", round_to=8)])
    assert graph.tensor("fc1.weight").shape[0] % 8 == 0
    assert graph.tensor("fc2.weight").shape[0] % 8 == 0


def test_round_to_larger_than_a_group_leaves_it_whole() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    _prune(graph, [PruneChannels(ratio=0.5, round_to=16)])
    assert graph.tensor("c1.weight").shape[0] == 8  # 8 units: no multiple of 16 below
    assert graph.tensor("c2.weight").shape[0] == 16  # 16 units: keeping 8 is not a multiple


def test_overrides_match_producing_layers_by_glob() -> None:
    graph = _wide()
    _prune(graph, [PruneChannels(ratio=0.5, overrides=(("fc2*", 0.25),))])
    assert graph.tensor("fc1.weight").shape[0] == 32
    assert graph.tensor("fc2.weight").shape[0] == 72


def test_unreachable_target_explains_why() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    result = _prune(graph, [PruneChannels(ratio=0.9, target="macs", max_ratio=0.25)])
    target = result.summary.target
    assert not target["within_tolerance"]
    assert "at most" in target["note"] and "max_ratio=0.25" in target["note"]


def test_coarse_groups_explain_why() -> None:
    model, x = make_residual()
    graph = trace(model, (x,))
    result = _prune(graph, [PruneChannels(ratio=0.5, target="macs")])
    target = result.summary.target
    assert not target["within_tolerance"] and "whole units" in target["note"]


def test_invalid_options_are_refused() -> None:
    with pytest.raises(PassOptionError):
        PruneChannels(target="flops")  # type: ignore[arg-type]
    with pytest.raises(PassOptionError):
        PruneChannels(overrides=(("fc1", 1.5),))
    with pytest.raises(PassOptionError):
        PruneChannels(round_to=0)


# ---------------------------------------------------------------- reconstruction
class LinearBottleneck(nn.Module):
    """4 -> 8 -> 3 with no nonlinearity: the 8 hidden features have rank 4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def test_reconstruction_recovers_a_linear_model_exactly() -> None:
    torch.manual_seed(0)
    model = LinearBottleneck().eval()
    batches = [torch.randn(32, 4) for _ in range(3)]
    graph = trace(model, (batches[0],))
    # 4 of 8 hidden units (plus fc1's bias, refit as fc2's bias) still span the input space
    result = _prune(
        graph, [PruneChannels(ratio=0.5, reconstruct=True, ridge=0.0)], Calibration(batches)
    )
    (row,) = result.summary.reconstruction
    assert row["layer"] == "fc2" and row["error_before"] > 1e-3 and row["error_after"] < 1e-8
    test = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(graph(test), model(test), atol=1e-4, rtol=1e-4)


def test_reconstruction_lowers_the_error_of_every_refit_layer() -> None:
    model, x = make_residual()
    graph = trace(model, (x,))
    batches = [torch.randn(8, *x.shape[1:]) for _ in range(2)]
    result = _prune(graph, [PruneChannels(ratio=0.5, reconstruct=True)], Calibration(batches))
    rows: list[dict[str, Any]] = result.summary.reconstruction
    assert {r["layer"] for r in rows} == {"c1", "c2", "fc"}
    for row in rows:
        assert row["error_after"] <= row["error_before"] + 1e-9


def test_reconstruction_needs_calibration_and_leaves_the_graph_alone_without_it() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    text = str(graph)
    with pytest.raises(PreconditionError, match="calibration"):
        _prune(graph, [PruneChannels(ratio=0.5, reconstruct=True)])
    assert str(graph) == text and graph.version == 0


def test_magnitude_default_is_used_without_a_criterion() -> None:
    graph = _wide()
    am = AnalysisManager(graph)
    PassManager([PruneChannels(ratio=0.5)]).run(graph, am)
    assert MagnitudeImportance() in am.computed
    assert np.all(graph.tensor("fc1.weight").shape[0] == 32)
